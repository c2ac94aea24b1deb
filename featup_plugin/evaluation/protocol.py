"""FeatUp's evaluation protocol end to end on a pretrained backbone (framework-free: torch, numpy, timm).

1. The frozen pretrained ViT of :mod:`.pretrain`; generated scenes (images, labels, depth, image labels) from the
   project's generator, whose splits are disjoint from the pretraining scenes.
2. Label-free upsampler training on the probe-training images (labels unused): FeatUp's JBU stack and a learned
   resize-conv baseline, both with the multi-view reconstruction loss (:func:`~featup_plugin.training.multiview_loss`).
3. Everything frozen; per method (:data:`METHODS`) the features are upsampled to the image size and a 1x1-conv
   linear probe is trained for segmentation and for depth with the same budget, seed and batch order
   (:func:`~.probe.train_probe`); implicit FeatUp is fitted per image (:func:`~featup_plugin.training.fit_implicit`).
4. Metrics at label resolution (mIoU, accuracy, boundary F; RMSE, delta<1.25) and the CAM faithfulness (A.D, A.I)
   of the pretraining classifier applied to each method's features.

:func:`run_probe_benchmark` returns the JSON-able results; ``tools/benchmark_probe.py`` is its CLI.
Details: docs/evaluation.md#the-probe-benchmark
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import os
import time
from typing import Callable, Dict, List, Optional

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from ..data.synthetic import CLASSES, generate_dataset, read_depth, read_image_labels, scene_seed
from ..training.implicit import fit_implicit
from ..training.losses import UncertaintyHead
from ..training.multiview import clip_early_gradients, multiview_loss
from ..upsamplers.downsamplers import build_downsampler
from ..upsamplers.jbu import JBUStack, num_x2_stages, plan_stage_sizes, resize_guidance
from .pretrain import load_pretrained, normalize_images, pretrain_seed
from .probe import cam_drop_increase, depth_metrics, predict_probe, seg_metrics, train_probe

__all__ = [
    'METHODS',
    'LEARNED',
    'ProbeBenchConfig',
    'PRESETS',
    'ResizeConv',
    'load_split',
    'train_upsampler',
    'upsample',
    'probe_order_digest',
    'THIN_CLASSES',
    'edge_alignment',
    'jbu_kernel_stats',
    'run_probe_benchmark',
    'format_table',
]

METHODS = ('lowres', 'bilinear', 'bicubic', 'resize_conv', 'jbu', 'implicit')
LEARNED = ('resize_conv', 'jbu')


@dataclasses.dataclass
class ProbeBenchConfig:
    """Settings of one benchmark run (all methods share them)."""

    seed: int = 0
    image_size: int = 128
    num_train: int = 32  # probe-training images (also the upsamplers' unlabeled images)
    num_val: int = 16
    upsampler_steps: int = 80
    upsampler_batch: int = 4
    upsampler_crop: int = 64  # random crops (the pretraining crop size): same stride, a quarter of the cost
    upsampler_lr: float = 1e-3
    views: int = 5
    max_pad: int = 12  # FeatUp's 20 at 224 px, scaled to the image size
    max_zoom: float = 2.0
    upsample_per_view: bool = False  # one upsampler pass per step (same loss in expectation, ~views x cheaper)
    probe_steps: int = 300
    probe_batch: int = 8
    probe_lr: float = 1e-3
    probe_pixels: Optional[int] = 2048  # label-resolution pixels per image and step (None: full maps)
    implicit_steps: int = 50
    implicit_views: int = 4
    implicit_pca_views: int = 20
    implicit_pca_dim: int = 64
    implicit_fit_size: int = 64
    implicit_downsampler: str = 'blur'
    methods: tuple = METHODS

    def validate(self) -> 'ProbeBenchConfig':
        ints = dict(
            image_size=(32, self.image_size),
            num_train=(2, self.num_train),
            num_val=(1, self.num_val),
            upsampler_steps=(1, self.upsampler_steps),
            upsampler_batch=(1, self.upsampler_batch),
            upsampler_crop=(16, self.upsampler_crop),
            views=(1, self.views),
            max_pad=(0, self.max_pad),
            probe_steps=(1, self.probe_steps),
            probe_batch=(1, self.probe_batch),
            implicit_steps=(0, self.implicit_steps),
            implicit_views=(1, self.implicit_views),
            implicit_pca_views=(2, self.implicit_pca_views),
            implicit_pca_dim=(1, self.implicit_pca_dim),
            implicit_fit_size=(8, self.implicit_fit_size),
            seed=(0, self.seed),
        )
        for name, (lo, v) in ints.items():
            if isinstance(v, bool) or not isinstance(v, int) or v < lo:
                raise ValueError(f'ProbeBenchConfig.{name} must be an int >= {lo}, got {v!r}')
        if self.probe_pixels is not None and (
            isinstance(self.probe_pixels, bool) or not isinstance(self.probe_pixels, int) or self.probe_pixels < 1
        ):
            raise ValueError(f'ProbeBenchConfig.probe_pixels must be None or an int >= 1, got {self.probe_pixels!r}')
        for name in ('upsampler_lr', 'probe_lr', 'max_zoom'):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and math.isfinite(v) and v > 0):
                raise ValueError(f'ProbeBenchConfig.{name} must be a positive number, got {v!r}')
        if self.image_size % 8:
            raise ValueError(
                f'ProbeBenchConfig.image_size must be a multiple of the patch size 8, got {self.image_size}'
            )
        if self.upsampler_crop > self.image_size or self.upsampler_crop % 8:
            raise ValueError(
                f'ProbeBenchConfig.upsampler_crop must be a multiple of 8 and <= image_size ({self.image_size}), '
                f'got {self.upsampler_crop}'
            )
        if self.max_zoom < 1:
            raise ValueError(f'ProbeBenchConfig.max_zoom must be >= 1, got {self.max_zoom}')
        unknown = [m for m in self.methods if m not in METHODS]
        if unknown or not self.methods or len(set(self.methods)) != len(self.methods):
            raise ValueError(f'ProbeBenchConfig.methods must be distinct names from {METHODS}, got {self.methods!r}')
        if self.implicit_downsampler not in ('attention', 'blur'):
            raise ValueError(f"implicit_downsampler must be 'attention' or 'blur', got {self.implicit_downsampler!r}")
        return self


#: ``full``: the documented run (<= 30 min on 2 cores); ``quick``: a smoke run of every stage (<= 3 min).
PRESETS: Dict[str, dict] = {
    'full': {},
    'quick': dict(
        image_size=64,
        num_train=6,
        num_val=3,
        upsampler_steps=8,
        upsampler_crop=32,
        probe_steps=30,
        probe_pixels=512,
        implicit_steps=4,
        implicit_pca_views=6,
        implicit_pca_dim=16,
        implicit_fit_size=32,
        views=2,
        max_pad=6,
    ),
}


class ResizeConv(nn.Module):
    """The learned, unguided baseline: per x2 stage, bilinear resize then ``x + conv3x3(x)`` (the conv starts at
    zero, so the untrained module is repeated bilinear upsampling)."""

    def __init__(self, dim: int, num_stages: int = 3):
        super().__init__()
        if dim < 1 or num_stages < 1:
            raise ValueError(f'ResizeConv: dim and num_stages must be >= 1, got {dim}, {num_stages}')
        self.num_stages = num_stages
        self.convs = nn.ModuleList(
            nn.Conv2d(dim, dim, 3, padding=1, padding_mode='replicate') for _ in range(num_stages)
        )
        for c in self.convs:
            nn.init.zeros_(c.weight)
            nn.init.zeros_(c.bias)

    def forward(self, x: torch.Tensor, output_size) -> torch.Tensor:
        for conv, size in zip(self.convs, plan_stage_sizes(x.shape[-2:], output_size, self.num_stages)):
            x = F.interpolate(x, size=size, mode='bilinear', align_corners=False)
            x = x + conv(x)
        return x


def load_split(root: str, split: str, n: int) -> Dict[str, object]:
    """``images`` uint8 ``[n, H, W, 3]``, ``labels`` long ``[n, H, W]``, ``depth`` float ``[n, H, W]`` and
    ``classes`` (image-level labels) of the first ``n`` images of a generated split."""
    from PIL import Image

    names = [f'{i:05d}.png' for i in range(n)]
    labels = read_image_labels(root, split)
    imgs, labs, deps = [], [], []
    for name in names:
        with Image.open(os.path.join(root, 'img_dir', split, name)) as im:
            imgs.append(np.asarray(im.convert('RGB')))
        with Image.open(os.path.join(root, 'ann_dir', split, name)) as im:
            labs.append(np.asarray(im))
        deps.append(read_depth(os.path.join(root, 'depth_dir', split, name)))
    return dict(
        images=torch.from_numpy(np.stack(imgs)),
        labels=torch.from_numpy(np.stack(labs).astype(np.int64)),
        depth=torch.from_numpy(np.stack(deps)),
        classes=[labels[name] for name in names],
    )


def _random_crops(images: torch.Tensor, crop: int, gen: torch.Generator) -> torch.Tensor:
    h, w = images.shape[-2:]
    ys = torch.randint(0, h - crop + 1, (images.shape[0],), generator=gen).tolist()
    xs = torch.randint(0, w - crop + 1, (images.shape[0],), generator=gen).tolist()
    return torch.stack([im[:, y : y + crop, x : x + crop] for im, y, x in zip(images, ys, xs)])


def train_upsampler(
    kind: str,
    extract_lr: Callable[[torch.Tensor], torch.Tensor],
    images: torch.Tensor,
    feat_dim: int,
    stride: int,
    cfg: ProbeBenchConfig,
    log: Optional[Callable[[str], None]] = None,
):
    """Trains ``kind`` (``'jbu'``: :class:`JBUStack`, ``'resize_conv'``: :class:`ResizeConv`) label-free with the
    multi-view loss on random ``cfg.upsampler_crop`` crops of normalised ``images [N, 3, H, W]`` (FeatUp's
    attention downsampler over ``stride``-px windows, uncertainty head, NAdam, early gradient clipping).
    Returns ``(module in eval mode, losses)``."""
    if kind not in LEARNED:
        raise ValueError(f'train_upsampler: kind must be one of {LEARNED}, got {kind!r}')
    stages = num_x2_stages(stride)
    torch.manual_seed(cfg.seed)
    net = JBUStack(feat_dim, num_stages=stages) if kind == 'jbu' else ResizeConv(feat_dim, stages)
    down = build_downsampler('attention', feat_dim, stride)
    scale = UncertaintyHead(feat_dim)
    params = [p for m in (net, down, scale) for p in m.parameters()]
    opt = torch.optim.NAdam(params, lr=cfg.upsampler_lr)
    gen = torch.Generator().manual_seed(cfg.seed)
    for m in (net, down, scale):
        m.train()
    losses: List[float] = []
    for step in range(cfg.upsampler_steps):
        idx = torch.randint(0, images.shape[0], (cfg.upsampler_batch,), generator=gen)
        img = _random_crops(images[idx], cfg.upsampler_crop, gen)
        terms = multiview_loss(
            img,
            extract_lr,
            lambda lr, im: net(lr, im, output_size=im.shape[-2:]) if kind == 'jbu' else net(lr, im.shape[-2:]),
            down,
            scale,
            gen,
            n_views=cfg.views,
            max_pad=cfg.max_pad,
            max_zoom=cfg.max_zoom,
            proj_dim=30 if feat_dim > 30 else None,
            upsample_per_view=cfg.upsample_per_view,
        )
        loss = sum(terms.values())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        clip_early_gradients(params, step)
        opt.step()
        losses.append(float(loss.detach()))
        if log is not None and (step + 1) % max(1, cfg.upsampler_steps // 5) == 0:
            log(f'{kind} step {step + 1}/{cfg.upsampler_steps}: loss {np.mean(losses[-10:]):.4f}')
    net.eval().requires_grad_(False)
    return net, losses


@torch.no_grad()
def upsample(method: str, lr: torch.Tensor, images: torch.Tensor, learned: Optional[nn.Module] = None) -> torch.Tensor:
    """``lr [B, C, h, w]`` features of normalised ``images [B, 3, H, W]`` at the image size (``'lowres'``: as is)
    with a parameter-free method or a trained ``learned`` upsampler (``'jbu'`` / ``'resize_conv'``)."""
    size = tuple(images.shape[-2:])
    if method == 'lowres':
        return lr
    if method in ('bilinear', 'bicubic'):
        return F.interpolate(lr, size=size, mode=method, align_corners=False)
    if method == 'jbu':
        return learned(lr, images, output_size=size)
    if method == 'resize_conv':
        return learned(lr, size)
    raise ValueError(f'upsample: method must be one of {METHODS[:-1]} (implicit is fitted per image), got {method!r}')


def probe_order_digest(n: int, steps: int, batch_size: int, seed: int) -> str:
    """A digest of the batch indices :func:`~.probe.train_probe` draws for ``n`` images (its generator replayed):
    equal digests mean equal data order."""
    gen = torch.Generator().manual_seed(seed)
    idx = torch.stack([torch.randint(0, n, (min(batch_size, n),), generator=gen) for _ in range(steps)])
    return hashlib.sha1(idx.numpy().tobytes()).hexdigest()[:16]


#: the generator's thin classes (a few px wide), where an upsampler's edges matter most
THIN_CLASSES = ('wire', 'pole', 'vine')


def _edge_masks(lab: torch.Tensor, ignore_index: int = 255):
    """``(valid, edge, thin_edge)`` masks of a label map ``[H, W]``: labelled pixels, those whose right or lower
    neighbour has another (labelled) class, and the edges with a thin class on one side."""
    thin = torch.tensor([CLASSES.index(c) for c in THIN_CLASSES])
    right = F.pad(lab[:, 1:], (0, 1), value=-1)
    down = F.pad(lab[1:], (0, 0, 0, 1), value=-1)
    valid = lab != ignore_index
    edge = torch.zeros_like(valid)
    edge_thin = torch.zeros_like(valid)
    for nb in (right, down):
        e = valid & (nb >= 0) & (nb != ignore_index) & (nb != lab)
        edge |= e
        edge_thin |= e & (torch.isin(lab, thin) | torch.isin(nb, thin))
    return valid, edge, edge_thin


@torch.no_grad()
def jbu_kernel_stats(net: JBUStack, images: torch.Tensor, labels: torch.Tensor, lr_size, ignore_index: int = 255):
    """Per stage of a trained :class:`JBUStack` on normalised ``images [N, 3, H, W]`` with ``labels [N, H, W]``
    (resized nearest to each stage's size): the learned ``range_temp`` (exp) and ``sigma_spatial``, and of the
    normalised range x spatial kernel (before the fixup) over the pixels of all / label-edge / thin-class-edge
    pixels: ``entropy_*`` (normalised by log(k*k); the spatial kernel alone has ``entropy_spatial``) and
    ``same_label_*``, the kernel mass on taps with the centre pixel's label (the spatial kernel alone:
    ``same_label_spatial_*``). An edge-aware kernel puts more mass on the same label than the spatial one."""
    out = []
    sizes = plan_stage_sizes(tuple(lr_size), tuple(images.shape[-2:]), net.num_stages)
    for stage, size in zip(net.stages, sizes):
        spatial = stage.get_spatial_kernel().float()
        spatial = spatial / spatial.sum(1, keepdim=True)
        taps, r = spatial.shape[1], stage.radius
        acc = {}
        for img, lab in zip(images.split(4), labels.split(4)):
            g = resize_guidance(img, size)
            k = stage.get_range_kernel(g) * spatial
            k = k / k.sum(1, keepdim=True).clamp_min(1e-12)
            ent = -(k * k.clamp_min(1e-12).log()).sum(1) / math.log(taps)
            lab_s = F.interpolate(lab[:, None].float(), size=size, mode='nearest')[:, 0].long()
            win = F.unfold(F.pad(lab_s[:, None].float(), (r,) * 4, value=-1), stage.diameter).view(
                lab_s.shape[0], taps, *size
            )
            same = (win == lab_s[:, None].float()).float()
            mass, mass_sp = (k * same).sum(1), (spatial * same).sum(1)
            for i in range(lab_s.shape[0]):
                valid, edge, thin = _edge_masks(lab_s[i], ignore_index)
                for name, m in (('all', valid), ('edge', edge), ('thin_edge', thin)):
                    a = acc.setdefault(name, [0.0, 0.0, 0.0, 0])
                    a[0] += float(ent[i][m].sum())
                    a[1] += float(mass[i][m].sum())
                    a[2] += float(mass_sp[i][m].sum())
                    a[3] += int(m.sum())
        rec = dict(
            size=list(size),
            range_temp=float(stage.range_temp.exp()),
            sigma_spatial=float(stage.sigma_spatial),
            entropy_spatial=float(-(spatial * spatial.log()).sum() / math.log(taps)),
        )
        for name, (e, ms, msp, n) in acc.items():
            n = max(n, 1)
            rec.update({f'entropy_{name}': e / n, f'same_label_{name}': ms / n, f'same_label_spatial_{name}': msp / n})
        out.append(rec)
    return out


@torch.no_grad()
def edge_alignment(features: torch.Tensor, labels: torch.Tensor, ignore_index: int = 255) -> Dict[str, float]:
    """How much of the features' spatial change sits on the label edges: with ``G`` the per-pixel norm (over
    channels) of the forward differences of ``features [N, C, H, W]`` (at the labels' size ``[N, H, W]``) and
    ``E`` the pixels whose right or lower neighbour has another label, ``edge_ratio = mean(G on E) / mean(G)`` and
    ``thin_edge_ratio`` the same over the edges with a thin class (:data:`THIN_CLASSES`) on one side. 1 means
    the features change no more at label edges than anywhere; sharper, edge-aligned features give larger
    values. Scale-free (a method's overall feature scale cancels)."""
    if features.dim() != 4 or tuple(features.shape[-2:]) != tuple(labels.shape[-2:]):
        raise ValueError(
            f'edge_alignment: features [N, C, H, W] at the labels size, got {tuple(features.shape)} '
            f'and {tuple(labels.shape)}'
        )
    g_all = g_edge = g_thin = 0.0
    n_all = n_edge = n_thin = 0
    for f, lab in zip(features, labels):
        f = f.float()
        dx = F.pad(f[:, :, 1:] - f[:, :, :-1], (0, 1))
        dy = F.pad(f[:, 1:] - f[:, :-1], (0, 0, 0, 1))
        g = (dx.square() + dy.square()).sum(0).sqrt()
        valid, edge, edge_thin = _edge_masks(lab, ignore_index)
        g_all += float(g[valid].sum())
        n_all += int(valid.sum())
        g_edge += float(g[edge].sum())
        n_edge += int(edge.sum())
        g_thin += float(g[edge_thin].sum())
        n_thin += int(edge_thin.sum())
    mean_all = g_all / max(n_all, 1)

    def ratio(total, n):
        return (total / n) / mean_all if n and mean_all > 0 else float('nan')

    return dict(edge_ratio=ratio(g_edge, n_edge), thin_edge_ratio=ratio(g_thin, n_thin), edge_pixels=n_edge)


def _implicit_features(images: torch.Tensor, extract_lr, cfg: ProbeBenchConfig, log) -> torch.Tensor:
    out = []
    t0 = time.perf_counter()
    for i in range(images.shape[0]):
        model, _ = fit_implicit(
            images[i : i + 1],
            extract_lr,
            steps=cfg.implicit_steps,
            views=cfg.implicit_views,
            pca_dim=cfg.implicit_pca_dim,
            pca_views=cfg.implicit_pca_views,
            view_bank=True,
            fit_size=min(cfg.implicit_fit_size, cfg.image_size),
            downsampler=cfg.implicit_downsampler,
            seed=cfg.seed,
        )
        out.append(model.features(tuple(images.shape[-2:])).half())
        if log is not None and (i + 1) % 10 == 0:
            log(f'implicit: {i + 1}/{images.shape[0]} images fitted ({time.perf_counter() - t0:.0f} s)')
    return torch.cat(out)


def probe_settings(cfg) -> dict:
    """The run's :func:`~featup_plugin.evaluation.probe.train_probe` budget (steps, batch, lr, seed, sampled
    pixels): the same for every method, and what tools/analysis_tools/probe_per_class.py replays."""
    return dict(
        steps=cfg.probe_steps, batch_size=cfg.probe_batch, lr=cfg.probe_lr, seed=cfg.seed, pixels=cfg.probe_pixels
    )


def _features(method, images, extract_lr, learned, cfg, log, batch: int = 8) -> torch.Tensor:
    if method == 'implicit':
        return _implicit_features(images, extract_lr, cfg, log)
    parts = []
    for img in images.split(batch):
        parts.append(upsample(method, extract_lr(img), img, learned.get(method)).half())
    return torch.cat(parts)


def _cam_pairs(classes: List[List[int]]):
    pairs = [(i, c) for i, cs in enumerate(classes) for c in cs]
    return torch.tensor([p[0] for p in pairs]), torch.tensor([p[1] for p in pairs])


def _check_disjoint(cfg: ProbeBenchConfig, pretrain_meta: dict, n_check: int = 2000) -> int:
    """Raises unless the probe scenes' seeds avoid the first ``n_check`` pretraining scene seeds."""
    pre = {pretrain_seed(int(pretrain_meta.get('seed', 0)), i) for i in range(n_check)}
    used = {scene_seed(cfg.seed, s, i) for s, n in (('train', cfg.num_train), ('val', cfg.num_val)) for i in range(n)}
    if pre & used:
        raise RuntimeError('probe scenes overlap the pretraining scenes: the seed streams are not disjoint')
    return n_check


def ensure_checkpoint(path: str, quick: bool = False, log=print) -> Dict[str, object]:
    """The pretrained backbone file at ``path``, made with :func:`~.pretrain.pretrain_backbone` when missing
    (defaults: 1323 s measured on 2 loaded cores; ``quick``: a few seconds, meaningless features).
    Returns ``dict(path, created, seconds)``."""
    if os.path.isfile(path):
        return dict(path=path, created=False, seconds=0.0)
    from .pretrain import pretrain_backbone, save_pretrained

    if log is not None:
        log(f'{path} is missing: pretraining the backbone' + (' (quick settings)' if quick else ''))
    t0 = time.perf_counter()
    kw = dict(num_images=8, size=64, crop=32, steps=3, batch_size=4, num_val=4) if quick else {}
    result = pretrain_backbone(**kw, log=log)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    save_pretrained(result, path)
    return dict(path=path, created=True, seconds=time.perf_counter() - t0)


def run_probe_benchmark(
    cfg: ProbeBenchConfig,
    work_dir: str,
    checkpoint: str,
    log: Optional[Callable[[str], None]] = print,
) -> Dict[str, object]:
    """Runs the protocol (module docstring) and returns ``{'settings', 'pretrained', 'data', 'upsamplers',
    'probe', 'methods', 'deltas_vs_bilinear', 'diagnostics', 'seconds'}`` (``diagnostics[m]``: the
    :func:`edge_alignment` of each label-resolution method's val features); ``methods[m] = {'seg': {miou, acc,
    bf}, 'depth': {rmse, delta1}, 'cam': {ad, ai}}`` (percent, RMSE in metres)."""
    cfg.validate()
    t_start = time.perf_counter()
    torch.manual_seed(cfg.seed)
    backbone, classifier, pmeta = load_pretrained(checkpoint)
    stride = 8 if 'patch8' in pmeta['model_name'] else 16
    feat_dim = classifier.conv.in_channels
    n_checked = _check_disjoint(cfg, pmeta)

    root = os.path.join(work_dir, f'data_s{cfg.seed}_{cfg.image_size}_{cfg.num_train}_{cfg.num_val}')
    summary = generate_dataset(root, cfg.num_train, cfg.num_val, cfg.image_size, cfg.seed)
    train, val = load_split(root, 'train', cfg.num_train), load_split(root, 'val', cfg.num_val)
    x_train, x_val = normalize_images(train['images']), normalize_images(val['images'])
    k = len(CLASSES)

    @torch.no_grad()
    def extract_lr(img):
        return backbone(img)[0]

    @torch.no_grad()
    def score_fn(img):
        return torch.cat([torch.sigmoid(classifier(extract_lr(b))) for b in img.split(32)])

    upsamplers, learned = {}, {}
    for kind in LEARNED:
        if kind not in cfg.methods:
            continue
        t0 = time.perf_counter()
        learned[kind], losses = train_upsampler(kind, extract_lr, x_train, feat_dim, stride, cfg, log)
        w = max(1, min(10, len(losses) // 4))
        upsamplers[kind] = dict(
            first_loss=float(np.mean(losses[:w])),
            last_loss=float(np.mean(losses[-w:])),
            losses=losses,
            seconds=time.perf_counter() - t0,
        )

    if learned:  # kept for later inspection (kernels, features); not read back by the benchmark
        torch.save({k: m.state_dict() for k, m in learned.items()}, os.path.join(root, 'upsamplers.pth'))

    cam_img, cam_cls = _cam_pairs(val['classes'])
    order = probe_order_digest(cfg.num_train, cfg.probe_steps, cfg.probe_batch, cfg.seed)
    methods, probe_info, diagnostics = {}, {}, {}
    for method in cfg.methods:
        t0 = time.perf_counter()
        f_train = _features(method, x_train, extract_lr, learned, cfg, log)
        f_val = _features(method, x_val, extract_lr, learned, cfg, log)
        t_feat = time.perf_counter() - t0
        t1 = time.perf_counter()
        probes = {}
        for task, tgt in (('seg', train['labels']), ('depth', train['depth'])):
            probes[task] = train_probe(f_train, tgt, task, num_classes=k, **probe_settings(cfg))
        t_probe = time.perf_counter() - t1
        size = tuple(val['labels'].shape[-2:])
        if tuple(f_val.shape[-2:]) == size:
            diagnostics[method] = edge_alignment(f_val, val['labels'])
        seg = seg_metrics(predict_probe(probes['seg'], f_val, size, 'seg'), val['labels'], k)
        depth = depth_metrics(predict_probe(probes['depth'], f_val, size, 'depth'), val['depth'])
        with torch.no_grad():
            cams = torch.cat([classifier.cam(f.float()) for f in f_val.split(8)])
        cam = cam_drop_increase(score_fn, x_val[cam_img], cams[cam_img, cam_cls], cam_cls)
        methods[method] = dict(seg=seg, depth=depth, cam=cam)
        probe_info[method] = dict(
            seed=cfg.seed,
            steps=cfg.probe_steps,
            batch_size=cfg.probe_batch,
            num_train=int(f_train.shape[0]),
            feature_size=list(f_train.shape[-2:]),
            pixels_per_image=(
                cfg.probe_pixels
                if cfg.probe_pixels is not None and cfg.probe_pixels < f_train.shape[-2] * f_train.shape[-1]
                else 'all'
            ),
            order_digest=order,
            seconds_features=t_feat,
            seconds_probes=t_probe,
            seconds=time.perf_counter() - t0,
        )
        if log is not None:
            log(
                f'{method}: '
                + ', '.join(f'{a}.{b} {v:.3f}' for a, d in methods[method].items() for b, v in d.items())
                + f' (features {t_feat:.0f} s, probes {t_probe:.0f} s, total {probe_info[method]["seconds"]:.0f} s)'
            )
        del f_train, f_val

    if 'jbu' in learned:
        lr_size = (cfg.image_size // stride, cfg.image_size // stride)
        diagnostics['jbu_kernels'] = jbu_kernel_stats(learned['jbu'], x_val, val['labels'], lr_size)
        if log is not None:
            for i, rec in enumerate(diagnostics['jbu_kernels']):
                log(f'jbu stage {i + 1} kernels: ' + ', '.join(f'{k} {v}' for k, v in rec.items()))
    deltas = {}
    if 'bilinear' in methods:
        base = methods['bilinear']
        deltas = {
            m: {g: {key: r[g][key] - base[g][key] for key in r[g]} for g in r}
            for m, r in methods.items()
            if m != 'bilinear'
        }
    return dict(
        settings=dataclasses.asdict(cfg)
        | dict(methods=list(cfg.methods), checkpoint=os.path.abspath(checkpoint), threads=torch.get_num_threads()),
        pretrained=dict(
            {key: pmeta.get(key) for key in ('model_name', 'model_kwargs', 'trained_on', 'val_map', 'seed')},
            stride=stride,
            disjoint_checked=n_checked,
        ),
        data=dict(
            root=summary['root'],
            size=summary['size'],
            seed=summary['seed'],
            num_train=cfg.num_train,
            num_val=cfg.num_val,
            cam_pairs=int(cam_cls.numel()),
        ),
        upsamplers=upsamplers,
        probe=probe_info,
        methods=methods,
        deltas_vs_bilinear=deltas,
        diagnostics=diagnostics,
        seconds=time.perf_counter() - t_start,
    )


_COLUMNS = (
    ('seg', 'miou', 'mIoU'),
    ('seg', 'acc', 'acc'),
    ('seg', 'bf', 'BF'),
    ('depth', 'rmse', 'RMSE'),
    ('depth', 'delta1', 'δ1'),
    ('cam', 'ad', 'A.D'),
    ('cam', 'ai', 'A.I'),
)


def format_table(results: Dict[str, object]) -> str:
    """FeatUp-Table-1-style rows (method | mIoU | acc | BF | RMSE | δ1 | A.D | A.I), then the deltas vs
    bilinear (markdown)."""
    head = '| method | ' + ' | '.join(c[2] for c in _COLUMNS) + ' |'
    sep = '|' + '---|' * (len(_COLUMNS) + 1)

    def row(name, rec, signed=False):
        fmt = '{:+.3f}' if signed else '{:.3f}'
        cells = [
            (fmt if g == 'depth' and key == 'rmse' else fmt.replace('3', '2')).format(rec[g][key])
            for g, key, _ in _COLUMNS
        ]
        return f'| {name} | ' + ' | '.join(cells) + ' |'

    lines = [head, sep] + [row(m, r) for m, r in results['methods'].items()]
    if results.get('deltas_vs_bilinear'):
        lines += ['', 'Δ vs bilinear:', '', head, sep]
        lines += [row(m, r, signed=True) for m, r in results['deltas_vs_bilinear'].items()]
    return '\n'.join(lines)
