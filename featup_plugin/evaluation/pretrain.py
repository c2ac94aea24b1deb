"""A backbone with learned features for the evaluation protocol, made here (no hub weights can be downloaded).

FeatUp evaluates upsamplers on *pretrained* backbones (ImageNet classification, DINO, CLIP). The stand-in is a
small timm ViT trained on generated scenes with the same kind of supervision as ImageNet, image-level labels:
random crops of scenes disjoint from the probe splits (their own seed stream), the target of a crop is the set of
classes present in it (multi-label, BCE). The classifier is a 1x1 convolution on the feature map followed by
global average pooling, so the same weights give class activation maps (CAMs) on features of any resolution.

Details (objective, data, what the features learn): docs/evaluation.md#pretrained-backbone
"""

from __future__ import annotations

import math
import time
from typing import Callable, Dict, List, Optional

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from ..data.synthetic import CLASSES, generate_scene
from ..upsamplers.guidance import IMAGENET_MEAN, IMAGENET_STD

__all__ = [
    'CamClassifier',
    'pretrain_seed',
    'pretraining_scenes',
    'crop_targets',
    'normalize_images',
    'build_backbone',
    'pretrain_backbone',
    'save_pretrained',
    'load_pretrained',
    'DEFAULT_VIT',
]

#: The default backbone: a 4-block ViT of width 192 with 8 px patches (timm's ViT-S/8 layout made tiny).
DEFAULT_VIT = dict(model_name='vit_small_patch8_224', model_kwargs=dict(embed_dim=192, depth=4, num_heads=3))
_PRETRAIN_STREAM = 0x70726574  # 'pret': the pretraining scenes' seed stream, disjoint from the dataset splits


class CamClassifier(nn.Module):
    """``logits = mean_{h,w} conv1x1(features)``: a linear classifier on pooled features whose per-pixel form is the
    class activation map, ``cam(features)`` (``[B, K, h, w]``, any resolution)."""

    def __init__(self, in_channels: int, num_classes: int):
        super().__init__()
        if in_channels < 1 or num_classes < 1:
            raise ValueError(
                f'CamClassifier: in_channels and num_classes must be >= 1, got {in_channels}, {num_classes}'
            )
        self.conv = nn.Conv2d(in_channels, num_classes, 1)

    def cam(self, features: torch.Tensor) -> torch.Tensor:
        if features.dim() != 4 or features.shape[1] != self.conv.in_channels:
            raise ValueError(
                f'CamClassifier: features must be [B, {self.conv.in_channels}, h, w], got {tuple(features.shape)}'
            )
        return self.conv(features)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.cam(features).mean((2, 3))


def pretrain_seed(seed: int, index: int) -> int:
    """Seed of pretraining scene ``index``: a stream no dataset split uses (``scene_seed`` has its own)."""
    state = np.random.SeedSequence([int(seed), _PRETRAIN_STREAM, int(index)])
    lo, hi = state.generate_state(2, np.uint32).tolist()
    return (hi << 32) | lo


def pretraining_scenes(num_images: int, size: int = 128, seed: int = 0):
    """``(images uint8 [N, H, W, 3], labels uint8 [N, H, W])`` of the pretraining scenes."""
    if num_images < 1:
        raise ValueError(f'num_images must be >= 1, got {num_images}')
    pairs = [generate_scene(pretrain_seed(seed, i), size) for i in range(num_images)]
    return np.stack([p[0] for p in pairs]), np.stack([p[1] for p in pairs])


def crop_targets(labels: torch.Tensor, num_classes: int, min_pixels: int = 1) -> torch.Tensor:
    """Multi-hot ``[B, K]`` float: class ``k`` present in crop ``b`` with at least ``min_pixels`` pixels."""
    b = labels.shape[0]
    flat = labels.reshape(b, -1).long()
    counts = torch.zeros(b, 256, dtype=torch.long).scatter_add_(1, flat, torch.ones_like(flat))
    return (counts[:, :num_classes] >= min_pixels).float()


def normalize_images(images_uint8: torch.Tensor) -> torch.Tensor:
    """``[B, H, W, 3]`` uint8 RGB -> ``[B, 3, H, W]`` float, ImageNet-normalised (the featurizers' input)."""
    x = images_uint8.permute(0, 3, 1, 2).float() / 255.0
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return (x - mean) / std


def build_backbone(model_name: str = DEFAULT_VIT['model_name'], model_kwargs: Optional[dict] = None, **kwargs):
    """The framework-free timm ViT feature extractor (:class:`~featup_plugin.featurizers.TimmViTFeatures`) with the
    last block's normed patch tokens as its one output."""
    from ..featurizers.timm_vit import TimmViTFeatures

    kw = dict(DEFAULT_VIT['model_kwargs']) if model_kwargs is None else dict(model_kwargs)
    return TimmViTFeatures(model_name, out_indices=(-1,), norm=True, model_kwargs=kw, **kwargs)


def _random_crops(images, labels, crop: int, gen: torch.Generator):
    n, h, w = labels.shape
    ys = torch.randint(0, h - crop + 1, (n,), generator=gen)
    xs = torch.randint(0, w - crop + 1, (n,), generator=gen)
    flip = torch.rand(n, generator=gen) < 0.5
    out_i, out_l = [], []
    for i in range(n):
        ci = images[i, ys[i] : ys[i] + crop, xs[i] : xs[i] + crop]
        cl = labels[i, ys[i] : ys[i] + crop, xs[i] : xs[i] + crop]
        if flip[i]:
            ci, cl = ci.flip(1), cl.flip(1)
        out_i.append(ci)
        out_l.append(cl)
    return torch.stack(out_i), torch.stack(out_l)


def _average_precision(scores: torch.Tensor, targets: torch.Tensor) -> List[float]:
    """AP per class (NaN where a class never or always occurs)."""
    aps = []
    for k in range(targets.shape[1]):
        t = targets[:, k]
        if t.sum() == 0 or t.sum() == len(t):
            aps.append(float('nan'))
            continue
        order = scores[:, k].argsort(descending=True)
        hits = t[order]
        precision = hits.cumsum(0) / torch.arange(1, len(t) + 1)
        aps.append(float((precision * hits).sum() / hits.sum()))
    return aps


def pretrain_backbone(
    num_images: int = 400,
    size: int = 128,
    crop: int = 64,
    steps: int = 300,
    batch_size: int = 32,
    lr: float = 1e-3,
    weight_decay: float = 0.05,
    seed: int = 0,
    model_name: str = DEFAULT_VIT['model_name'],
    model_kwargs: Optional[dict] = None,
    num_val: int = 64,
    log: Optional[Callable[[str], None]] = print,
) -> Dict[str, object]:
    """Trains :func:`build_backbone` + :class:`CamClassifier` on crop-level multi-label targets of the
    pretraining scenes (AdamW, cosine schedule with 5% warm-up). Returns ``dict(backbone, classifier, meta)``,
    ``meta`` holding the settings, the training time and the held-out mean AP (crops of ``num_val`` other
    pretraining scenes; the probe splits are never seen)."""
    for name, v in (('num_images', num_images), ('steps', steps), ('batch_size', batch_size), ('crop', crop)):
        if not isinstance(v, int) or v < 1:
            raise ValueError(f'pretrain_backbone: {name} must be a positive int, got {v!r}')
    if crop > size:
        raise ValueError(f'pretrain_backbone: crop ({crop}) must not exceed the scene size ({size})')
    t0 = time.perf_counter()
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    imgs, labs = (torch.from_numpy(a) for a in pretraining_scenes(num_images + num_val, size, seed))
    train_i, train_l, val_i, val_l = imgs[:num_images], labs[:num_images], imgs[num_images:], labs[num_images:]
    k = len(CLASSES)
    backbone = build_backbone(model_name, model_kwargs)
    classifier = CamClassifier(backbone.embed_dim, k)
    params = list(backbone.parameters()) + list(classifier.parameters())
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    warm = max(1, steps // 20)

    def lr_at(step):
        return lr * min(1.0, (step + 1) / warm) * 0.5 * (1 + math.cos(math.pi * min(1.0, step / steps)))

    backbone.train()
    classifier.train()
    losses = []
    for step in range(steps):
        idx = torch.randint(0, num_images, (batch_size,), generator=gen)
        ci, cl = _random_crops(train_i[idx], train_l[idx], crop, gen)
        logits = classifier(backbone(normalize_images(ci))[0])
        loss = F.binary_cross_entropy_with_logits(logits, crop_targets(cl, k))
        for group in opt.param_groups:
            group['lr'] = lr_at(step)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        losses.append(loss.item())
        if log is not None and (step + 1) % max(1, steps // 10) == 0:
            log(f'pretrain step {step + 1}/{steps}: loss {np.mean(losses[-max(1, steps // 10) :]):.4f}')
    backbone.eval()
    classifier.eval()
    with torch.no_grad():
        vgen = torch.Generator().manual_seed(seed + 1)
        ci, cl = _random_crops(val_i.repeat(4, 1, 1, 1), val_l.repeat(4, 1, 1), crop, vgen)
        scores = torch.cat([classifier(backbone(normalize_images(c))[0]) for c in ci.split(64)])
        aps = _average_precision(scores, crop_targets(cl, k))
    valid = [a for a in aps if not math.isnan(a)]
    meta = dict(
        model_name=model_name,
        model_kwargs=dict(DEFAULT_VIT['model_kwargs']) if model_kwargs is None else dict(model_kwargs),
        classes=list(CLASSES),
        trained_on=(
            f'{num_images} generated scenes of {size}x{size} (featup_plugin.evaluation.pretrain.pretrain_seed, '
            f'seed {seed}: disjoint from every dataset split), random {crop}x{crop} crops with horizontal flips, '
            'crop-level multi-label targets (classes present), BCE'
        ),
        steps=steps,
        batch_size=batch_size,
        lr=lr,
        weight_decay=weight_decay,
        seed=seed,
        final_loss=float(np.mean(losses[-max(1, steps // 10) :])),
        first_loss=float(np.mean(losses[: max(1, steps // 10)])),
        val_ap={c: a for c, a in zip(CLASSES, aps)},
        val_map=float(np.mean(valid)) if valid else float('nan'),
        seconds=time.perf_counter() - t0,
    )
    if log is not None:
        log(f'pretrained in {meta["seconds"]:.0f} s: held-out crop mAP {meta["val_map"]:.3f}')
    return dict(backbone=backbone, classifier=classifier, meta=meta)


def save_pretrained(result: Dict[str, object], path: str) -> None:
    """Writes ``{'state_dict': <bare timm ViT keys>, 'classifier': {...}, 'meta': {...}}``: the project's ViT
    backbones (``TimmViT``, ``TimmViTFeatures``, the trainer's featurizer) load it as ``pretrained=path`` with the
    ``model_name`` / ``model_kwargs`` of ``meta``."""
    backbone, classifier = result['backbone'], result['classifier']
    state = {k[len('model.') :]: v.detach().cpu() for k, v in backbone.state_dict().items() if k.startswith('model.')}
    torch.save(
        dict(
            state_dict=state,
            classifier={k: v.detach().cpu() for k, v in classifier.state_dict().items()},
            meta=result['meta'],
        ),
        path,
    )


def load_pretrained(path: str):
    """``(backbone, classifier, meta)`` from a :func:`save_pretrained` file (both frozen, in eval mode)."""
    from ..checkpoint.io import read_checkpoint

    ckpt = read_checkpoint(path)
    if not isinstance(ckpt, dict) or not {'state_dict', 'classifier', 'meta'} <= set(ckpt):
        raise ValueError(f'{path} is not a file written by save_pretrained (needs state_dict, classifier and meta)')
    meta = ckpt['meta']
    backbone = build_backbone(meta['model_name'], meta['model_kwargs'], pretrained=path, frozen=True)
    weight = ckpt['classifier']['conv.weight']
    classifier = CamClassifier(weight.shape[1], weight.shape[0])
    classifier.load_state_dict(ckpt['classifier'])
    classifier.eval().requires_grad_(False)
    return backbone, classifier, meta
