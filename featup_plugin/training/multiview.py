"""FeatUp's multi-view reconstruction loss for a JBU (or any) upsampler (framework-free: torch only).

:func:`multiview_loss` is one training step's loss; ``FeatUpJBUTrainer`` (mmengine) and
``tools/benchmarks/benchmark_quality.py`` (a plain loop) both call it.

Derivation / details: docs/training.md#multi-view-loss
"""

from __future__ import annotations

from typing import Callable, Dict, Optional

import torch
import torch.nn as nn

from .jitter import apply_jitter, sample_jitter
from .losses import magnitude_tv_loss, project, random_projection, uncertainty_loss

__all__ = ['multiview_loss']


def multiview_loss(
    img: torch.Tensor,
    extract_lr: Callable[[torch.Tensor], torch.Tensor],
    upsample: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    downsampler: nn.Module,
    scale_net: Optional[nn.Module],
    generator: torch.Generator,
    n_views: int = 5,
    max_pad: int = 20,
    max_zoom: float = 2.0,
    proj_dim: Optional[int] = 30,
    tv_weight: float = 0.0,
) -> Dict[str, torch.Tensor]:
    """``{'loss_rec': ..., ['loss_tv': ...]}`` for a batch ``img [B, 3, H, W]``.

    ``extract_lr(img)``: the frozen backbone's (normed) features; ``upsample(lr, img)``: HR features at the image
    size. The upsampler runs once; each of ``n_views`` views ``t`` (drawn from ``generator``, one per batch as in
    FeatUp) compares ``P downsampler(t(hr))`` with ``P extract_lr(t(img))`` under the uncertainty loss (scale
    from ``scale_net(extract_lr(t(img)))``; plain MSE if ``scale_net`` is None), ``P`` a fresh random projection
    to ``proj_dim`` dims (None/0: none). ``tv_weight`` adds the TV of ``|P t(hr)|^2``. Both averaged over views.
    """
    if n_views < 1:
        raise ValueError(f'n_views must be >= 1, got {n_views}')
    with torch.no_grad():
        lr = extract_lr(img)
    hr = upsample(lr, img)
    if tuple(hr.shape[-2:]) != tuple(img.shape[-2:]):
        raise ValueError(
            f'the upsampler must return features at the image size {tuple(img.shape[-2:])}, got {tuple(hr.shape[-2:])}'
        )
    rec = img.new_zeros(())
    tv = img.new_zeros(())
    for _ in range(n_views):
        t = sample_jitter(img.shape[-2:], max_pad, max_zoom, generator=generator)
        proj = (
            random_projection(hr.shape[1], proj_dim, generator, device=img.device, dtype=hr.dtype) if proj_dim else None
        )
        with torch.no_grad():
            jit_lr = extract_lr(apply_jitter(img, t))
        jit_hr = apply_jitter(hr, t)
        down = downsampler(jit_hr, jit_lr.shape[-2:])
        scale = scale_net(jit_lr) if scale_net is not None else None
        rec = rec + uncertainty_loss(project(down, proj), project(jit_lr, proj), scale)
        if tv_weight > 0:
            tv = tv + magnitude_tv_loss(project(jit_hr, proj))
    losses = dict(loss_rec=rec / n_views)
    if tv_weight > 0:
        losses['loss_tv'] = tv_weight * tv / n_views
    return losses
