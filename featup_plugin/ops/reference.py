"""Pure-PyTorch implementations of the JBU primitives.

* ``adaptive_conv_unfold`` / ``local_correlation_unfold``: the literal ``F.unfold`` + ``einsum`` formulas.
  They materialise ``B*C*k*k*H*W`` values and serve as the test oracle and benchmark baseline.
* ``adaptive_conv_taps`` / ``local_correlation_taps``: the same sums as a loop over the ``k*k`` taps of
  shifted views, ``O(C*H*W)`` extra memory. This is the fallback used when no compiled op is available, and
  it traces to plain ONNX ops (Slice, Mul, Add, ReduceSum).

Shapes: ``input``/``padded`` ``[B, C, H+k-1, W+k-1]``; ``filters`` ``[B, H, W, k, k]``;
``center`` ``[B, C, H, W]``; the correlation is returned as ``[B, k*k, H, W]`` (tap ``t = i*k + j``).
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
            term = filters[:, None, :, :, i, j] * input[:, :, i:i + h, j:j + w]
            out = term if out is None else out + term
    return out


def local_correlation_taps(center: torch.Tensor, padded: torch.Tensor) -> torch.Tensor:
    h, w = center.shape[-2:]
    k = padded.shape[-2] - h + 1
    maps = [(center * padded[:, :, i:i + h, j:j + w]).sum(1) for i in range(k) for j in range(k)]
    return torch.stack(maps, 1)
