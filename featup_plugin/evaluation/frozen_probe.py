"""FeatUp's probe protocol on real data (framework-free, torch): a frozen backbone + frozen upsampler, a linear
probe trained on its features streamed batch by batch (COCO-Stuff-27 segmentation, depth), and the metrics
accumulated over the validation split. The small-data benchmark (features cached in memory) is
:mod:`featup_plugin.evaluation.protocol`; the CLI is ``tools/train_probe.py``.

FeatUp's ``train_probes.py`` settings (docs/evaluation.md#featups-protocol-on-coco-stuff-27): a plain 1x1 conv,
Adam at lr 5e-3 (what its code runs; its config's ``lr: 1e-3`` and ``dropout: .5`` are not used by the code),
batch 2, labels resized (nearest) to the feature size for the loss, predictions (argmax at the feature size)
resized nearest to the 224 px labels for mIoU / accuracy; depth: a scale-and-shift-invariant loss against
(MiDaS) pseudo-depth, RMSE and delta < 1.25.
"""

from __future__ import annotations

import itertools
from typing import Callable, Dict, Iterable, Optional

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from .boundary import COUNT_KEYS, boundary_counts, scores_from_counts
from .probe import LinearProbe

__all__ = [
    'FROZEN_METHODS',
    'frozen_features',
    'ssi_align',
    'ssi_loss',
    'train_frozen_probe',
    'evaluate_frozen_probe',
]

#: How the frozen features reach the probe: the backbone's own (``lowres``), bilinear / bicubic to the image
#: size, or the model's JBU upsampler (``jbu``, FeatUp) to the image size.
FROZEN_METHODS = ('lowres', 'bilinear', 'bicubic', 'jbu')


def frozen_features(model: nn.Module, method: str) -> Callable[[torch.Tensor], torch.Tensor]:
    """``fn(image) -> features [B, C, h, w]`` without gradients for a :class:`~featup_plugin.hub.UpsampledBackbone`
    ``model`` (``.model`` the featurizer, ``.upsampler`` the JBU stack). The model is put in eval mode and its
    parameters frozen."""
    if method not in FROZEN_METHODS:
        raise ValueError(f'frozen_features: method must be one of {FROZEN_METHODS}, got {method!r}')
    if not (hasattr(model, 'model') and hasattr(model, 'upsampler')):
        raise TypeError(
            f'frozen_features: expected an UpsampledBackbone (.model, .upsampler), got {type(model).__name__}'
        )
    model.eval().requires_grad_(False)

    @torch.no_grad()
    def fn(image: torch.Tensor) -> torch.Tensor:
        if method == 'jbu':
            return model(image, output_size=image.shape[-2:])
        low = model.model(image)
        if method == 'lowres':
            return low
        return F.interpolate(low, size=image.shape[-2:], mode=method, align_corners=False)

    return fn


def ssi_align(pred: torch.Tensor, target: torch.Tensor, mask: Optional[torch.Tensor] = None) -> torch.Tensor:
    """``pred [B, H, W]`` mapped per image by the least-squares scale and shift onto ``target`` (over ``mask``):
    the alignment of MiDaS's scale-and-shift-invariant loss (Ranftl et al., TPAMI 2020)."""
    if pred.shape != target.shape or pred.dim() != 3:
        raise ValueError(
            f'ssi_align: pred and target must be [B, H, W] alike, got {tuple(pred.shape)}, {tuple(target.shape)}'
        )
    m = torch.ones_like(target) if mask is None else mask.to(target.dtype)
    n = m.sum((1, 2)).clamp_min(1)
    mp, mt = (m * pred).sum((1, 2)) / n, (m * target).sum((1, 2)) / n
    dp, dt = pred - mp[:, None, None], target - mt[:, None, None]
    var = (m * dp * dp).sum((1, 2))
    scale = (m * dp * dt).sum((1, 2)) / var.clamp_min(1e-12)
    return scale[:, None, None] * dp + mt[:, None, None]


def ssi_loss(pred: torch.Tensor, target: torch.Tensor, mask: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Scale-and-shift-invariant MSE: ``mean over mask of (ssi_align(pred, target) - target) ** 2``."""
    m = torch.ones_like(target) if mask is None else mask.to(target.dtype)
    err = (ssi_align(pred, target, m) - target) ** 2
    return (m * err).sum() / m.sum().clamp_min(1)


def _resize_nearest(targets: torch.Tensor, size) -> torch.Tensor:
    if tuple(targets.shape[-2:]) == tuple(size):
        return targets
    return F.interpolate(targets[:, None].float(), size=tuple(size), mode='nearest')[:, 0].to(targets.dtype)


def train_frozen_probe(
    features_fn: Callable[[torch.Tensor], torch.Tensor],
    loader: Iterable[dict],
    task: str,
    num_classes: int = 27,
    iters: Optional[int] = None,
    epochs: int = 1,
    lr: float = 5e-3,
    dropout: float = 0.0,
    ignore_index: int = 255,
    seed: int = 0,
    device: str = 'cpu',
    log: Optional[Callable[[str], None]] = None,
    log_interval: int = 50,
) -> LinearProbe:
    """A :class:`LinearProbe` trained on ``features_fn(batch['img'])`` for ``iters`` steps (or ``epochs`` passes
    over ``loader``). ``task='seg'``: CE against ``batch['label']`` resized nearest to the feature size;
    ``task='depth'``: :func:`ssi_loss` against ``batch['depth']`` (pixels with depth > 0) at the feature size."""
    if task not in ('seg', 'depth'):
        raise ValueError(f"train_frozen_probe: task must be 'seg' or 'depth', got {task!r}")
    if iters is not None and iters < 1:
        raise ValueError(f'train_frozen_probe: iters must be >= 1, got {iters}')
    if epochs < 1:
        raise ValueError(f'train_frozen_probe: epochs must be >= 1, got {epochs}')
    torch.manual_seed(seed)
    probe: Optional[LinearProbe] = None
    opt = None
    batches = itertools.chain.from_iterable(loader for _ in range(epochs)) if iters is None else _cycle(loader)
    step = 0
    for batch in batches:
        if iters is not None and step >= iters:
            break
        feats = features_fn(batch['img'].to(device)).float()
        if probe is None:
            probe = LinearProbe(feats.shape[1], num_classes if task == 'seg' else 1, dropout).to(device).train()
            opt = torch.optim.Adam(probe.parameters(), lr=lr)
        out = probe(feats)
        if task == 'seg':
            tgt = _resize_nearest(batch['label'].to(device), feats.shape[-2:])
            loss = F.cross_entropy(out, tgt, ignore_index=ignore_index)
        else:
            if 'depth' not in batch:
                raise KeyError("train_frozen_probe: task 'depth' needs batches with 'depth' (give the depth root)")
            tgt = _resize_nearest(batch['depth'].to(device).float(), feats.shape[-2:])
            loss = ssi_loss(out[:, 0], tgt, tgt > 0)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        step += 1
        if log is not None and (step == 1 or step % log_interval == 0):
            log(f'probe step {step}: loss {loss.item():.4f}')
    if probe is None:
        raise ValueError('train_frozen_probe: the loader gave no batch')
    return probe.eval()


def _cycle(loader):
    while True:
        empty = True
        for batch in loader:
            empty = False
            yield batch
        if empty:
            return


@torch.no_grad()
def evaluate_frozen_probe(
    features_fn: Callable[[torch.Tensor], torch.Tensor],
    probe: LinearProbe,
    loader: Iterable[dict],
    task: str,
    num_classes: int = 27,
    ignore_index: int = 255,
    tolerance: float = 2.0,
    device: str = 'cpu',
) -> Dict[str, float]:
    """Metrics over ``loader`` at label resolution. Seg: argmax at the feature size, resized nearest to the label
    size (FeatUp); ``miou`` (one confusion matrix over the split; classes absent from prediction and truth left
    out), ``acc``, ``bf`` (boundary F, ``tolerance`` px), in percent. Depth: the prediction resized bilinearly and
    aligned per image by :func:`ssi_align`; ``rmse`` and ``delta1`` (percent with ``max(p/g, g/p) < 1.25``)."""
    probe.eval()
    conf = torch.zeros(num_classes, num_classes, dtype=torch.float64)
    counts = {k: np.zeros(num_classes) for k in COUNT_KEYS}
    sq = n = d1 = 0.0
    for batch in loader:
        out = probe(features_fn(batch['img'].to(device)).float())
        if task == 'seg':
            gt = batch['label'].long()
            pred = F.interpolate(out.argmax(1, keepdim=True).float(), size=gt.shape[-2:], mode='nearest')[:, 0]
            pred = pred.long().cpu()
            valid = gt != ignore_index
            conf += (
                torch.bincount(gt[valid] * num_classes + pred[valid], minlength=num_classes * num_classes)
                .reshape(num_classes, num_classes)
                .double()
            )
            for k, v in boundary_counts(pred.numpy(), gt.numpy(), num_classes, tolerance, ignore_index).items():
                counts[k] = counts[k] + np.asarray(v, np.float64)
        else:
            gt = batch['depth'].float()
            p = F.interpolate(out, size=gt.shape[-2:], mode='bilinear', align_corners=False)[:, 0].cpu()
            valid = gt > 0
            p = ssi_align(p, gt, valid)
            g, q = gt[valid].double(), p[valid].double()
            sq += float(((q - g) ** 2).sum())
            n += g.numel()
            q = q.clamp_min(1e-6)
            d1 += float((torch.maximum(q / g, g / q) < 1.25).sum())
    if task == 'seg':
        inter = conf.diag()
        union = conf.sum(0) + conf.sum(1) - inter
        present = union > 0
        total = conf.sum()
        return dict(
            miou=100 * float((inter[present] / union[present]).mean()) if present.any() else 0.0,
            acc=100 * float(inter.sum() / total) if total > 0 else 0.0,
            bf=100 * scores_from_counts(counts)['f_score'],
        )
    if n == 0:
        raise ValueError('evaluate_frozen_probe: no pixel with depth > 0 in the validation split')
    return dict(rmse=float(np.sqrt(sq / n)), delta1=100 * d1 / n)
