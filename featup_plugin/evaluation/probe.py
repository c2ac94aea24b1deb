"""FeatUp's frozen-feature probes and CAM scores (framework-free, torch): a 1x1-conv linear probe trained on
precomputed features for semantic segmentation (CE) or depth (regression), its metrics at label resolution, and
the average drop / increase of class activation maps (Grad-CAM++'s A.D / A.I).

Definitions and FeatUp's settings: docs/evaluation.md#probes-and-metrics
"""

from __future__ import annotations

from typing import Callable, Dict, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from .boundary import boundary_counts, scores_from_counts

#: the pixel-sampling generator of :func:`train_probe` is seeded ``seed + PIXEL_SEED_OFFSET`` (its batch order
#: generator ``seed``), so the two streams differ and sampling pixels leaves the batch order unchanged
PIXEL_SEED_OFFSET = 7919

__all__ = [
    'LinearProbe',
    'PIXEL_SEED_OFFSET',
    'probe_loss',
    'gather_pixels',
    'train_probe',
    'predict_probe',
    'seg_metrics',
    'depth_metrics',
    'cam_drop_increase',
    'cam_masks',
]


class LinearProbe(nn.Module):
    """FeatUp's linear probe: dropout (0.5 by default, as its ``train_probe`` config) then a 1x1 convolution."""

    def __init__(self, in_channels: int, out_channels: int, dropout: float = 0.5):
        super().__init__()
        if in_channels < 1 or out_channels < 1:
            raise ValueError(f'LinearProbe: channels must be >= 1, got {in_channels} -> {out_channels}')
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f'LinearProbe: dropout must be in [0, 1), got {dropout}')
        self.dropout = nn.Dropout2d(dropout) if dropout > 0 else nn.Identity()
        self.conv = nn.Conv2d(in_channels, out_channels, 1)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.conv(self.dropout(features))


def _targets_at(targets: torch.Tensor, size, task: str) -> torch.Tensor:
    """Labels resized (nearest, as FeatUp) or depth resized (area average) to the feature size."""
    if tuple(targets.shape[-2:]) == tuple(size):
        return targets
    if task == 'seg':
        return F.interpolate(targets[:, None].float(), size=size, mode='nearest')[:, 0].long()
    return F.adaptive_avg_pool2d(targets[:, None], size)[:, 0]


def probe_loss(
    out: torch.Tensor, tgt: torch.Tensor, task: str, ignore_index: int = 255, class_weight=None
) -> torch.Tensor:
    """The probe's training loss on outputs ``out [B, K, ...]`` against ``tgt [B, ...]`` (any spatial layout:
    a full map or sampled pixels): CE (ignoring ``ignore_index``; ``class_weight [K]`` as in
    ``F.cross_entropy``) for ``seg``, L1 on log-depth for ``depth``."""
    if task == 'seg':
        return F.cross_entropy(out, tgt, weight=class_weight, ignore_index=ignore_index)
    return (out[:, 0] - tgt.clamp_min(1e-3).log()).abs().mean()


def gather_pixels(flat: torch.Tensor, idx: torch.Tensor, pix: torch.Tensor) -> torch.Tensor:
    """Sampled pixels of channel-last maps ``flat [N, h*w, ...]``: image ``idx[b]``, pixels ``pix[b, :]``, as a
    ``[B, C, P, 1]`` map (``[B, P, 1]`` for targets without a channel dim), so that a 1x1 convolution and
    ``Dropout2d`` (whole channels per image) act on it exactly as on the full map."""
    g = flat[idx[:, None], pix]  # [B, P, C] or [B, P]
    return g.permute(0, 2, 1)[..., None] if g.dim() == 3 else g[..., None]


def train_probe(
    features: torch.Tensor,
    targets: torch.Tensor,
    task: str,
    num_classes: Optional[int] = None,
    steps: int = 500,
    batch_size: int = 8,
    lr: float = 1e-3,
    dropout: float = 0.5,
    ignore_index: int = 255,
    seed: int = 0,
    pixels: Optional[int] = None,
    class_weight: Optional[torch.Tensor] = None,
) -> LinearProbe:
    """Trains a :class:`LinearProbe` on frozen ``features [N, C, h, w]`` (Adam, FeatUp's lr 1e-3).

    ``task='seg'``: ``targets`` int labels ``[N, H, W]``, CE at the feature size (labels resized nearest);
    ``task='depth'``: float depth ``[N, H, W]``, L1 on log-depth at the feature size (area-averaged), which
    penalises relative errors uniformly across the depth range. The batch order comes from ``seed`` alone, so
    probes on different features see the same images in the same order.

    ``pixels``: when given and smaller than ``h * w``, each step's loss is over ``pixels`` pixels per image drawn
    uniformly (with replacement) from a second generator seeded by ``seed`` alone (so every method with the same
    feature size sees the same pixels in the same order, and the batch order is unchanged). A 1x1 probe is
    per-pixel, so this is an unbiased estimate of the full-map loss (the dropout masks are per image and
    channel, as on the full map) at ``pixels / (h * w)`` of the cost. ``None`` (or ``>= h * w``): full maps.
    ``class_weight``: per-class CE weights for ``seg`` (default: none, FeatUp's plain CE; the benchmark uses
    none, the analysis tool can try balanced weights)."""
    if task not in ('seg', 'depth'):
        raise ValueError(f"train_probe: task must be 'seg' or 'depth', got {task!r}")
    if features.dim() != 4 or targets.dim() != 3 or features.shape[0] != targets.shape[0]:
        raise ValueError(
            f'train_probe: features must be [N, C, h, w] and targets [N, H, W] with the same N, got '
            f'{tuple(features.shape)} and {tuple(targets.shape)}'
        )
    if task == 'seg' and (num_classes is None or num_classes < 2):
        raise ValueError('train_probe: task seg needs num_classes >= 2')
    if pixels is not None and (isinstance(pixels, bool) or not isinstance(pixels, int) or pixels < 1):
        raise ValueError(f'train_probe: pixels must be None or an int >= 1, got {pixels!r}')
    torch.manual_seed(seed)
    probe = LinearProbe(features.shape[1], num_classes if task == 'seg' else 1, dropout)
    opt = torch.optim.Adam(probe.parameters(), lr=lr)
    tgt = _targets_at(targets, features.shape[-2:], task)
    gen = torch.Generator().manual_seed(seed)
    n = features.shape[0]
    hw = features.shape[-2] * features.shape[-1]
    sampled = pixels is not None and pixels < hw
    if sampled:
        pix_gen = torch.Generator().manual_seed(seed + PIXEL_SEED_OFFSET)
        flat = features.flatten(2).transpose(1, 2).contiguous()  # [N, h*w, C]: a pixel's channels contiguous
        flat_tgt = tgt.flatten(1)
    probe.train()
    for _ in range(steps):
        idx = torch.randint(0, n, (min(batch_size, n),), generator=gen)
        if sampled:
            pix = torch.randint(0, hw, (idx.numel(), pixels), generator=pix_gen)
            out = probe(gather_pixels(flat, idx, pix).float())
            loss = probe_loss(out, gather_pixels(flat_tgt, idx, pix), task, ignore_index, class_weight)
        else:
            loss = probe_loss(probe(features[idx].float()), tgt[idx], task, ignore_index, class_weight)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return probe.eval()


@torch.no_grad()
def predict_probe(probe: LinearProbe, features: torch.Tensor, size, task: str, batch_size: int = 16) -> torch.Tensor:
    """Predictions at label resolution ``size``: class indices ``[N, H, W]`` (logits resized bilinearly first) or
    depth in metres ``[N, H, W]`` (log-depth resized bilinearly, then exponentiated)."""
    outs = []
    for f in features.split(batch_size):
        out = F.interpolate(probe(f.float()), size=tuple(size), mode='bilinear', align_corners=False)
        outs.append(out.argmax(1) if task == 'seg' else out[:, 0].exp())
    return torch.cat(outs)


def seg_metrics(pred, gt, num_classes: int, ignore_index: int = 255, tolerance: float = 2.0) -> Dict[str, float]:
    """``miou``, ``acc`` (pixel accuracy) and ``bf`` (boundary F-score, 2 px tolerance), in percent, summed over
    the dataset (IoU from one confusion matrix; classes absent from both prediction and truth are left out)."""
    pred, gt = torch.as_tensor(pred).long(), torch.as_tensor(gt).long()
    if pred.shape != gt.shape:
        raise ValueError(f'seg_metrics: pred and gt shapes differ: {tuple(pred.shape)} vs {tuple(gt.shape)}')
    valid = gt != ignore_index
    p, g = pred[valid], gt[valid]
    if ((g < 0) | (g >= num_classes)).any():
        raise ValueError(f'seg_metrics: ground-truth labels outside [0, {num_classes}) other than {ignore_index}')
    hits = p == g
    inter = torch.bincount(g[hits], minlength=num_classes).double()
    union = (
        torch.bincount(g, minlength=num_classes).double()
        + torch.bincount(p[(p >= 0) & (p < num_classes)], minlength=num_classes).double()
        - inter
    )
    present = union > 0
    iou = inter[present] / union[present]
    bf = scores_from_counts(boundary_counts(pred.numpy(), gt.numpy(), num_classes, tolerance, ignore_index))
    return dict(
        miou=100 * float(iou.mean()),
        acc=100 * float(hits.double().mean()) if hits.numel() else 0.0,
        bf=100 * bf['f_score'],
    )


def depth_metrics(pred, gt, min_depth: float = 1e-3) -> Dict[str, float]:
    """``rmse`` (metres) and ``delta1`` (percent of pixels with ``max(pred/gt, gt/pred) < 1.25``)."""
    pred, gt = torch.as_tensor(pred).double(), torch.as_tensor(gt).double()
    if pred.shape != gt.shape:
        raise ValueError(f'depth_metrics: pred and gt shapes differ: {tuple(pred.shape)} vs {tuple(gt.shape)}')
    valid = gt > min_depth
    p, g = pred[valid].clamp_min(min_depth), gt[valid]
    ratio = torch.maximum(p / g, g / p)
    return dict(rmse=float(((p - g) ** 2).mean().sqrt()), delta1=100 * float((ratio < 1.25).double().mean()))


def cam_masks(cam: torch.Tensor, size) -> torch.Tensor:
    """Explanation maps ``[N, 1, H, W]`` in [0, 1]: each CAM resized (bilinear) to ``size`` and min-max
    normalised per image (Grad-CAM++'s ``E_c``; a constant CAM gives 1 everywhere)."""
    m = F.interpolate(cam[:, None].float(), size=tuple(size), mode='bilinear', align_corners=False)
    lo = m.amin((2, 3), keepdim=True)
    hi = m.amax((2, 3), keepdim=True)
    # a constant CAM singles nothing out: it keeps the whole image (E = 1)
    return torch.where(hi > lo, (m - lo) / (hi - lo).clamp_min(1e-12), torch.ones_like(m))


@torch.no_grad()
def cam_drop_increase(
    score_fn: Callable[[torch.Tensor], torch.Tensor],
    images: torch.Tensor,
    cams: torch.Tensor,
    classes: torch.Tensor,
    fill: Optional[torch.Tensor] = None,
) -> Dict[str, float]:
    """Grad-CAM++'s Average Drop and Average Increase (Chattopadhyay et al., WACV 2018), in percent.

    ``score_fn(images) -> [N, K]`` class scores (probabilities: sigmoid / softmax applied by the caller);
    ``cams [N, h, w]`` the CAM of ``classes [N]`` for each image at any resolution. With ``Y`` the score of the
    class on the image and ``O`` on the image masked by the normalised CAM (``image * E`` pixelwise, or
    ``E * image + (1 - E) * fill`` when a ``fill`` image, e.g. the normalised-space zero, is given):
    ``A.D = mean(max(0, Y - O) / Y)`` (lower is better), ``A.I = mean(O > Y)`` (higher is better)."""
    if images.dim() != 4 or cams.dim() != 3 or not (images.shape[0] == cams.shape[0] == classes.shape[0]):
        raise ValueError(
            f'cam_drop_increase: images [N, 3, H, W], cams [N, h, w] and classes [N] must share N, got '
            f'{tuple(images.shape)}, {tuple(cams.shape)}, {tuple(classes.shape)}'
        )
    e = cam_masks(cams, images.shape[-2:])
    masked = images * e if fill is None else e * images + (1 - e) * fill
    idx = torch.arange(images.shape[0])
    y = score_fn(images)[idx, classes].double()
    o = score_fn(masked)[idx, classes].double()
    drop = (y - o).clamp_min(0) / y.clamp_min(1e-12)
    return dict(ad=100 * float(drop.mean()), ai=100 * float((o > y).double().mean()))
