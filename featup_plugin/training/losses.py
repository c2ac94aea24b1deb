"""Losses of FeatUp's training (framework-free: torch only): the adaptive-uncertainty reconstruction loss
(:class:`UncertaintyHead`, :func:`uncertainty_loss`), random projections of the features, and the total-variation,
magnitude and blur regularisers.

Derivation / details: docs/training.md#losses
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn as nn

from ..upsamplers.downsamplers import gaussian_blur

__all__ = [
    'UncertaintyHead',
    'uncertainty_loss',
    'random_projection',
    'project',
    'total_variation',
    'magnitude_tv_loss',
    'blur_loss',
]


class UncertaintyHead(nn.Module):
    """``s = exp(conv1x1(feats) + 0.1)``, one positive scale per pixel (FeatUp's ``ScaleNet``, key ``net``)."""

    def __init__(self, dim: int):
        super().__init__()
        self.net = nn.Conv2d(dim, 1, kernel_size=1)

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        return torch.exp(self.net(feats) + 0.1)


def uncertainty_loss(pred: torch.Tensor, target: torch.Tensor, scale: Optional[torch.Tensor] = None) -> torch.Tensor:
    """``mean(|pred - target|^2 / (2 s^2) + log s)`` over every element; ``scale`` ``[B, 1, h, w]`` broadcasts
    over channels. Without ``scale``: the plain mean squared error."""
    if pred.shape != target.shape:
        raise ValueError(f'pred and target shapes differ: {tuple(pred.shape)} vs {tuple(target.shape)}')
    mse = (pred - target).square()
    if scale is None:
        return mse.mean()
    if (
        scale.dim() != 4
        or scale.shape[1] != 1
        or scale.shape[0] != pred.shape[0]
        or scale.shape[-2:] != pred.shape[-2:]
    ):
        raise ValueError(f'scale must be [B, 1, h, w] matching pred {tuple(pred.shape)}, got {tuple(scale.shape)}')
    return (mse / (2 * scale.square()) + scale.log()).mean()


def random_projection(
    in_dim: int, out_dim: int = 30, generator: Optional[torch.Generator] = None, device=None, dtype=torch.float32
) -> torch.Tensor:
    """``[in_dim, out_dim]`` Gaussian directions, each column of unit norm. ``out_dim >= in_dim``: identity."""
    if in_dim < 1 or out_dim < 1:
        raise ValueError(f'random_projection dims must be >= 1, got {in_dim} -> {out_dim}')
    if out_dim >= in_dim:
        return torch.eye(in_dim, device=device, dtype=dtype)
    proj = torch.randn(in_dim, out_dim, generator=generator, dtype=torch.float32)
    proj = proj / proj.square().sum(0, keepdim=True).sqrt()
    return proj.to(device=device, dtype=dtype)


def project(feats: torch.Tensor, proj: Optional[torch.Tensor]) -> torch.Tensor:
    """``[B, C, H, W] x [C, D] -> [B, D, H, W]`` (None: unchanged)."""
    if proj is None:
        return feats
    if feats.dim() != 4 or feats.shape[1] != proj.shape[0]:
        raise ValueError(f'cannot project {tuple(feats.shape)} features with a {tuple(proj.shape)} matrix')
    return torch.einsum('bchw,cd->bdhw', feats, proj.to(feats.dtype))


def total_variation(x: torch.Tensor) -> torch.Tensor:
    """Mean squared difference of vertical plus horizontal neighbours of ``[B, C, H, W]``."""
    if x.dim() != 4:
        raise ValueError(f'total_variation expects [B, C, H, W], got {tuple(x.shape)}')
    tv = x.new_zeros(())
    if x.shape[-2] > 1:
        tv = tv + (x[:, :, 1:] - x[:, :, :-1]).square().mean()
    if x.shape[-1] > 1:
        tv = tv + (x[:, :, :, 1:] - x[:, :, :, :-1]).square().mean()
    return tv


def magnitude_tv_loss(feats: torch.Tensor) -> torch.Tensor:
    """Total variation of the per-pixel squared magnitude ``sum_c F^2`` (FeatUp's ``mag_tv`` term)."""
    return total_variation(feats.square().sum(1, keepdim=True))


def blur_loss(feats: torch.Tensor, kernel_size: int = 5, sigma: float = 1.0) -> torch.Tensor:
    """``mean((F - blur(F))^2)``: penalises high-frequency content not explained by the image."""
    return (feats - gaussian_blur(feats, kernel_size, sigma)).square().mean()
