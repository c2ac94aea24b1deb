"""Losses of FeatUp's training (framework-free: torch only): the adaptive-uncertainty reconstruction loss
(:class:`UncertaintyHead`, :func:`uncertainty_loss`), random projections of the features, the total-variation,
magnitude and blur regularisers, FeatUp's sampled CRF loss and the filter entropy.

Derivation / details: docs/training.md#losses
"""

from __future__ import annotations

import math
from typing import Optional, Sequence

import torch
import torch.nn as nn

from ..upsamplers.downsamplers import gaussian_blur

__all__ = [
    'UncertaintyHead',
    'uncertainty_loss',
    'random_projection',
    'project',
    'total_variation',
    'magnitude',
    'magnitude_loss',
    'magnitude_tv_loss',
    'blur_loss',
    'sampled_crf_loss',
    'filter_entropy',
]


class UncertaintyHead(nn.Module):
    """``s = max(exp(conv1x1(feats) + 0.1), min_scale)``, one positive scale per pixel (FeatUp's ``ScaleNet``,
    key ``net``). ``init_gain``: the conv's default weights and bias are multiplied by it at init (FeatUp: 0.1,
    so ``s`` starts near ``e^0.1``; 1.0: PyTorch's init). ``min_scale`` (FeatUp: 1e-4; 0: no clamp)."""

    def __init__(self, dim: int, init_gain: float = 0.1, min_scale: float = 1e-4):
        super().__init__()
        if not (math.isfinite(init_gain) and init_gain >= 0):
            raise ValueError(f'UncertaintyHead init_gain must be a finite number >= 0, got {init_gain}')
        if not (math.isfinite(min_scale) and min_scale >= 0):
            raise ValueError(f'UncertaintyHead min_scale must be a finite number >= 0, got {min_scale}')
        self.net = nn.Conv2d(dim, 1, kernel_size=1)
        self.min_scale = float(min_scale)
        with torch.no_grad():
            self.net.weight.mul_(init_gain)
            self.net.bias.mul_(init_gain)

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        return torch.exp(self.net(feats) + 0.1).clamp_min(self.min_scale)


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
    in_dim: int,
    out_dim: int = 30,
    generator: Optional[torch.Generator] = None,
    device=None,
    dtype=torch.float32,
    batch: Optional[int] = None,
) -> torch.Tensor:
    """Gaussian directions, each column of unit norm: ``[in_dim, out_dim]``, or ``[batch, in_dim, out_dim]`` (one
    matrix per image, as FeatUp draws them) when ``batch`` is given. ``out_dim >= in_dim``: the identity."""
    if in_dim < 1 or out_dim < 1:
        raise ValueError(f'random_projection dims must be >= 1, got {in_dim} -> {out_dim}')
    if batch is not None and batch < 1:
        raise ValueError(f'random_projection batch must be >= 1, got {batch}')
    shape = (in_dim, out_dim) if batch is None else (batch, in_dim, out_dim)
    if out_dim >= in_dim:
        eye = torch.eye(in_dim, device=device, dtype=dtype)
        return eye if batch is None else eye.expand(batch, in_dim, in_dim)
    proj = torch.randn(shape, generator=generator, dtype=torch.float32)
    proj = proj / proj.square().sum(-2, keepdim=True).sqrt()
    return proj.to(device=device, dtype=dtype)


def project(feats: torch.Tensor, proj: Optional[torch.Tensor]) -> torch.Tensor:
    """``[B, C, H, W]`` x ``[C, D]`` (shared) or ``[B, C, D]`` (per image) -> ``[B, D, H, W]`` (None: unchanged)."""
    if proj is None:
        return feats
    if feats.dim() != 4 or proj.dim() not in (2, 3) or feats.shape[1] != proj.shape[-2]:
        raise ValueError(f'cannot project {tuple(feats.shape)} features with a {tuple(proj.shape)} matrix')
    if proj.dim() == 2:
        return torch.einsum('bchw,cd->bdhw', feats, proj.to(feats.dtype))
    if proj.shape[0] != feats.shape[0]:
        raise ValueError(f'{proj.shape[0]} projection matrices for a batch of {feats.shape[0]}')
    return torch.einsum('bchw,bcd->bdhw', feats, proj.to(feats.dtype))


def total_variation(x: torch.Tensor) -> torch.Tensor:
    """FeatUp's ``total_variation``: squared differences of vertical plus horizontal neighbours of
    ``[B, C, H, W]``, summed and divided by ``B * C * H * W``."""
    if x.dim() != 4:
        raise ValueError(f'total_variation expects [B, C, H, W], got {tuple(x.shape)}')
    tv = (x[:, :, 1:] - x[:, :, :-1]).square().sum() + (x[:, :, :, 1:] - x[:, :, :, :-1]).square().sum()
    return tv / x.numel()


def magnitude(feats: torch.Tensor) -> torch.Tensor:
    """Per-pixel magnitude ``|F| = sqrt(sum_c F^2)``, ``[B, 1, H, W]`` (gradient 0 where ``F = 0``)."""
    return torch.linalg.vector_norm(feats, dim=1, keepdim=True)


def magnitude_loss(pred_magnitude: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """``mean((pred_magnitude - |target|)^2)``: implicit FeatUp's ``mag_loss``, ``pred_magnitude [B, 1, h, w]``
    the downsampled magnitude channel, ``target [B, C, h, w]`` the backbone's features of the view."""
    if pred_magnitude.dim() != 4 or pred_magnitude.shape[1] != 1:
        raise ValueError(f'pred_magnitude must be [B, 1, h, w], got {tuple(pred_magnitude.shape)}')
    return (pred_magnitude - magnitude(target)).square().mean()


def magnitude_tv_loss(feats: torch.Tensor, squared: bool = False) -> torch.Tensor:
    """:func:`total_variation` of the per-pixel magnitude ``|F|`` (implicit FeatUp's ``mag_tv``), or with
    ``squared=True`` of ``sum_c F^2`` (FeatUp's JBU ``tv`` term)."""
    if feats.dim() != 4:
        raise ValueError(f'magnitude_tv_loss expects [B, C, H, W], got {tuple(feats.shape)}')
    return total_variation(feats.square().sum(1, keepdim=True) if squared else magnitude(feats))


def blur_loss(feats: torch.Tensor, kernel_size: int = 5, sigma: float = 1.0) -> torch.Tensor:
    """``mean((F - blur(F))^2)``: penalises high-frequency content not explained by the image."""
    return (feats - gaussian_blur(feats, kernel_size, sigma)).square().mean()


def sampled_crf_loss(
    guidance: torch.Tensor,
    feats: torch.Tensor,
    n_samples: int = 1000,
    alpha: float = 0.1,
    beta: float = 0.15,
    gamma: float = 0.005,
    w1: float = 10.0,
    w2: float = 3.0,
    shift: float = 0.0,
    generator: Optional[torch.Generator] = None,
    coords: Optional[Sequence[torch.Tensor]] = None,
) -> torch.Tensor:
    """FeatUp's ``SampledCRFLoss``: a dense CRF energy on ``n_samples`` pixels drawn uniformly (with repetition,
    the same pixels for the whole batch; ``coords = (ys, xs)`` gives them)::

        mean_{b, i, j} |f_i - f_j|^2 * (w1 exp(-|p_i - p_j|^2 / (2 alpha) - |g_i - g_j|^2 / (2 beta))
                                        + w2 exp(-|p_i - p_j|^2 / (2 gamma)) - shift)

    ``p = (y / H, x / W)``; ``g``: ``guidance [B, Cg, H, W]`` (FeatUp: the ImageNet-normalised image),
    ``f``: ``feats [B, C, H, W]``. FeatUp's JBU training: the defaults, weight 0.001, on the first view."""
    if guidance.dim() != 4 or feats.dim() != 4 or guidance.shape[0] != feats.shape[0]:
        raise ValueError(
            f'guidance and feats must be [B, C, H, W] with one batch, got {tuple(guidance.shape)}, {tuple(feats.shape)}'
        )
    if guidance.shape[-2:] != feats.shape[-2:]:
        raise ValueError(f'guidance {tuple(guidance.shape[-2:])} and feats {tuple(feats.shape[-2:])} sizes differ')
    if min(alpha, beta, gamma) <= 0:
        raise ValueError(f'alpha, beta and gamma must be > 0, got {alpha}, {beta}, {gamma}')
    h, w = feats.shape[-2:]
    if coords is None:
        if n_samples < 1:
            raise ValueError(f'n_samples must be >= 1, got {n_samples}')
        ys = torch.randint(0, h, (n_samples,), generator=generator)
        xs = torch.randint(0, w, (n_samples,), generator=generator)
    else:
        ys, xs = coords
    ys, xs = ys.to(feats.device), xs.to(feats.device)
    pos = torch.stack([ys.to(feats.dtype) / h, xs.to(feats.dtype) / w], 1)  # [N, 2]
    pos_d = (pos.unsqueeze(1) - pos.unsqueeze(0)).square().sum(-1)  # [N, N]
    g = guidance[:, :, ys, xs].to(feats.dtype).transpose(1, 2)  # [B, N, Cg]
    g_d = (g.unsqueeze(2) - g.unsqueeze(1)).square().sum(-1)  # [B, N, N]
    f = feats[:, :, ys, xs].transpose(1, 2)  # [B, N, C]
    sq = f.square().sum(-1)  # |f_i - f_j|^2 as |f_i|^2 + |f_j|^2 - 2 f_i.f_j: no [B, N, N, C] tensor
    f_d = (sq.unsqueeze(2) + sq.unsqueeze(1) - 2 * f @ f.transpose(1, 2)).clamp_min(0)
    kernel = w1 * torch.exp(-pos_d / (2 * alpha) - g_d / (2 * beta)) + w2 * torch.exp(-pos_d / (2 * gamma)) - shift
    return (f_d * kernel).mean()


def filter_entropy(kernel: torch.Tensor) -> torch.Tensor:
    """``-sum k log(max(k, 1e-7))`` of a normalised downsampling kernel (FeatUp's ``entropy``; its JBU training
    subtracts ``filter_ent_weight`` times it per view, i.e. rewards spread-out kernels)."""
    return -(kernel * kernel.clamp_min(1e-7).log()).sum()
