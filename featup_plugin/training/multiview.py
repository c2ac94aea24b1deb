"""FeatUp's multi-view reconstruction loss for a JBU (or any) upsampler (framework-free: torch only).

:func:`multiview_loss` is one training step's loss; ``FeatUpJBUTrainer`` (mmengine) and
``tools/benchmarks/benchmark_quality.py`` (a plain loop) both call it. :func:`clip_early_gradients` is FeatUp's
gradient clipping of the first steps for such plain loops (the trainer's is ``EarlyGradClipHook``).

Derivation / details: docs/training.md#multi-view-loss
"""

from __future__ import annotations

import math
from typing import Callable, Dict, Iterable, Optional

import torch
import torch.nn as nn

from .jitter import apply_jitter, sample_jitter
from .losses import filter_entropy, magnitude_tv_loss, project, random_projection, sampled_crf_loss, uncertainty_loss

__all__ = [
    'multiview_loss',
    'clip_early_gradients',
    'check_loss_weight',
    'CLIP_GRAD_NORM',
    'CLIP_GRAD_STEPS',
    'CRF_GUIDANCE',
]

CLIP_GRAD_NORM = 1e-4  # FeatUp's JBU training: total gradient norm clipped to this ...
CLIP_GRAD_STEPS = 10  # ... for the first this many optimiser steps
CRF_GUIDANCE = ('view', 'image')


def clip_early_gradients(
    params: Iterable[torch.Tensor], step: int, max_norm: float = CLIP_GRAD_NORM, steps: int = CLIP_GRAD_STEPS
) -> Optional[torch.Tensor]:
    """FeatUp's clipping for a plain loop: between ``backward`` and ``optimizer.step`` of (0-based) ``step``,
    clip the total gradient norm of ``params`` to ``max_norm`` while ``step < steps``; returns the norm before
    clipping, or None for the later steps."""
    if step < steps:
        return torch.nn.utils.clip_grad_norm_([p for p in params if p.grad is not None], max_norm)
    return None


def check_loss_weight(name: str, value: float) -> float:
    """``value`` as a float; a ``ValueError`` naming ``name`` unless it is a finite number >= 0."""
    if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
        raise ValueError(f'{name} must be a finite number >= 0, got {value!r}')
    return float(value)


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
    crf_weight: float = 0.001,
    filter_ent_weight: float = 0.0,
    upsample_per_view: bool = True,
    crf_guidance: str = 'image',
    crf_samples: int = 1000,
) -> Dict[str, torch.Tensor]:
    """FeatUp's JBU training loss for a batch ``img [B, 3, H, W]``: ``{'loss_rec', ['loss_crf'], ['loss_tv'],
    ['loss_ent']}`` (a term is present when its weight is > 0; their sum is the loss).

    ``extract_lr(img)``: the frozen backbone's (normed) features; ``upsample(lr, img)``: HR features at the image
    size. Each of ``n_views`` views ``t`` (drawn from ``generator``, one per batch as in FeatUp) compares
    ``P downsampler(t(hr))`` with ``P extract_lr(t(img))`` under the uncertainty loss (scale from
    ``scale_net(extract_lr(t(img)))``; plain MSE if ``scale_net`` is None), ``P`` a fresh random projection per
    view and image to ``proj_dim`` dims (None/0: none); ``loss_rec`` is the mean over views.
    On the first view only: ``crf_weight`` times the sampled CRF loss of ``P t(hr)`` (``crf_samples`` pixels)
    guided, as FeatUp's code does, by the un-jittered ``img`` (``crf_guidance='image'``, the default: misaligned
    with the view's features) or by ``t(img)`` (``'view'``, aligned); ``tv_weight`` times the TV of ``|P t(hr)|^2``.
    ``filter_ent_weight`` subtracts that weight times the downsampler's kernel entropy once per view, as FeatUp
    (``downsampler.get_kernel()``: the blur downsampler only).

    ``upsample_per_view=True`` (FeatUp) runs the upsampler once per view, each with fresh dropout masks;
    ``False`` runs it once per step and jitters that one output for every view. Each view's term then has the
    same distribution as with FeatUp (masks, views and projections are independent of each other either way),
    so the loss and its gradient are equal in expectation; only the views' terms become correlated through the
    shared masks (more variance per step). It saves ``n_views - 1`` upsampler forward and backward passes, and
    memory: here one backward covers all views, so the per-view mode holds ``n_views`` upsampler graphs (FeatUp
    calls backward per view instead).
    """
    if n_views < 1:
        raise ValueError(f'n_views must be >= 1, got {n_views}')
    tv_weight = check_loss_weight('tv_weight', tv_weight)
    crf_weight = check_loss_weight('crf_weight', crf_weight)
    filter_ent_weight = check_loss_weight('filter_ent_weight', filter_ent_weight)
    if crf_guidance not in CRF_GUIDANCE:
        raise ValueError(f'crf_guidance must be one of {CRF_GUIDANCE}, got {crf_guidance!r}')
    if filter_ent_weight > 0 and not hasattr(downsampler, 'get_kernel'):
        raise ValueError(
            f'filter_ent_weight > 0 needs a downsampler with one kernel (the blur downsampler), got '
            f'{type(downsampler).__name__}'
        )
    with torch.no_grad():
        lr = extract_lr(img)

    def run_upsampler():
        hr = upsample(lr, img)
        if tuple(hr.shape[-2:]) != tuple(img.shape[-2:]):
            raise ValueError(
                f'the upsampler must return features at the image size {tuple(img.shape[-2:])}, '
                f'got {tuple(hr.shape[-2:])}'
            )
        return hr

    hr = None if upsample_per_view else run_upsampler()
    rec = img.new_zeros(())
    losses: Dict[str, torch.Tensor] = {}
    for i in range(n_views):
        if upsample_per_view:
            hr = run_upsampler()
        t = sample_jitter(img.shape[-2:], max_pad, max_zoom, generator=generator)
        proj = (
            random_projection(hr.shape[1], proj_dim, generator, device=img.device, dtype=hr.dtype, batch=hr.shape[0])
            if proj_dim
            else None
        )
        jit_img = apply_jitter(img, t)
        with torch.no_grad():
            jit_lr = extract_lr(jit_img)
        jit_hr = apply_jitter(hr, t)
        down = downsampler(jit_hr, jit_lr.shape[-2:])
        scale = scale_net(jit_lr) if scale_net is not None else None
        rec = rec + uncertainty_loss(project(down, proj), project(jit_lr, proj), scale)
        if i == 0 and (crf_weight > 0 or tv_weight > 0):
            proj_hr = project(jit_hr, proj)
            if crf_weight > 0:
                guide = jit_img if crf_guidance == 'view' else img
                losses['loss_crf'] = crf_weight * sampled_crf_loss(
                    guide, proj_hr, n_samples=crf_samples, generator=generator
                )
            if tv_weight > 0:
                losses['loss_tv'] = tv_weight * magnitude_tv_loss(proj_hr, squared=True)
    out = dict(loss_rec=rec / n_views, **losses)
    if filter_ent_weight > 0:
        out['loss_ent'] = -filter_ent_weight * n_views * filter_entropy(downsampler.get_kernel())
    return out
