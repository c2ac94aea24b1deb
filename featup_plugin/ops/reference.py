"""Pure-PyTorch JBU primitives: ``*_unfold`` (the literal ``F.unfold`` + ``einsum`` formulas: test oracle, benchmark
baseline) and ``*_taps`` (a loop over the ``k*k`` taps, ``O(C*H*W)`` memory: the fallback, traceable to ONNX).

Derivation / details: docs/ops.md#pytorch-references
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def adaptive_conv_unfold(input: torch.Tensor, filters: torch.Tensor) -> torch.Tensor:
    b, c, hp, wp = input.shape
    _, h, w, k, _ = filters.shape
    cols = F.unfold(input, k).view(b, c, k * k, h, w)
    return torch.einsum('bcthw,bhwt->bchw', cols, filters.reshape(b, h, w, k * k))


def local_correlation_unfold(center: torch.Tensor, padded: torch.Tensor) -> torch.Tensor:
    b, c, h, w = center.shape
    k = padded.shape[-2] - h + 1
    cols = F.unfold(padded, k).view(b, c, k * k, h, w)
    return torch.einsum('bcthw,bchw->bthw', cols, center)


def adaptive_conv_taps(input: torch.Tensor, filters: torch.Tensor) -> torch.Tensor:
    _, h, w, k, _ = filters.shape
    out = None
    for i in range(k):
        for j in range(k):
            term = filters[:, None, :, :, i, j] * input[:, :, i : i + h, j : j + w]
            out = term if out is None else out + term
    return out


def local_correlation_taps(center: torch.Tensor, padded: torch.Tensor) -> torch.Tensor:
    h, w = center.shape[-2:]
    k = padded.shape[-2] - h + 1
    maps = [(center * padded[:, :, i : i + h, j : j + w]).sum(1) for i in range(k) for j in range(k)]
    return torch.stack(maps, 1)
