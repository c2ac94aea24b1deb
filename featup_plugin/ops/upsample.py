"""Bicubic x2 upsampling followed by reflect padding, fused on CPU (``torch.ops.featup.upsample2x_bicubic_pad``):
the JBU stage's ``_pad(F.interpolate(source, 2x, 'bicubic'), r)`` without the intermediate upsampled tensor and
its padded copy. Other sizes, devices and dtypes take the plain formulation.

Derivation / details: docs/ops.md#fused-x2-bicubic-upsampling-and-reflect-padding
"""

from __future__ import annotations

from typing import Tuple

import torch
import torch.nn.functional as F

from . import _backend

__all__ = ['upsample_bicubic_pad', 'upsample_bicubic_pad_plain']


def _reflect_or_replicate(x: torch.Tensor, r: int) -> torch.Tensor:
    if r == 0:
        return x
    mode = 'reflect' if min(x.shape[-2:]) > r else 'replicate'
    return F.pad(x, [r, r, r, r], mode=mode)


def upsample_bicubic_pad_plain(source: torch.Tensor, size: Tuple[int, int], pad: int) -> torch.Tensor:
    """``F.interpolate(source, size, 'bicubic', align_corners=False)`` padded by ``pad``: reflect, or replicate
    when the upsampled map is too small to reflect (FeatUp's JBU)."""
    hr = F.interpolate(source, size, mode='bicubic', align_corners=False)
    return _reflect_or_replicate(hr, pad)


def _fusable(source: torch.Tensor, size: Tuple[int, int], pad: int) -> bool:
    if source.dim() != 4 or source.numel() == 0 or source.dtype not in (torch.float32, torch.float64):
        return False
    if source.device.type not in ('cpu', 'meta') or torch.onnx.is_in_onnx_export() or torch.jit.is_tracing():
        return False
    h, w = source.shape[-2:]
    if tuple(size) != (2 * h, 2 * w) or not 0 <= pad < min(size):
        return False
    return source.device.type in _backend.served_devices() and _backend.has_fused_upsample()


def upsample_bicubic_pad(source: torch.Tensor, size: Tuple[int, int], pad: int) -> torch.Tensor:
    """:func:`upsample_bicubic_pad_plain`, through the fused CPU op for an exact x2 (float32 / float64, reflect
    padding); differentiable (the backward is PyTorch's reflect-pad and bicubic backward)."""
    size = (int(size[0]), int(size[1]))
    if _fusable(source, size, pad):
        return torch.ops.featup.upsample2x_bicubic_pad(source, pad)
    return upsample_bicubic_pad_plain(source, size, pad)
