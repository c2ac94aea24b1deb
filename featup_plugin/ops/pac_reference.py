"""Pure-PyTorch pixel-adaptive convolution (PAC), two ways: ``pac_conv2d_unfold`` (the literal ``F.unfold``
formula: test oracle, benchmark baseline) and ``pac_conv2d_taps`` (a loop over the taps, ``O(C * Ho * Wo)`` memory
per tap: the fallback without the compiled op, and what tracing / ONNX export records).

Derivation / details: docs/pac.md#pytorch-references
"""

from __future__ import annotations

from typing import Optional, Tuple

import torch
import torch.nn.functional as F

Pair = Tuple[int, int]


def _out_size(h: int, w: int, k: Pair, s: Pair, p: Pair, d: Pair) -> Pair:
    return ((h + 2 * p[0] - d[0] * (k[0] - 1) - 1) // s[0] + 1, (w + 2 * p[1] - d[1] * (k[1] - 1) - 1) // s[1] + 1)


def pac_conv2d_unfold(
    input: torch.Tensor,
    kernel: torch.Tensor,
    weight: Optional[torch.Tensor],
    bias: Optional[torch.Tensor],
    kernel_size: Pair,
    stride: Pair,
    padding: Pair,
    dilation: Pair,
) -> torch.Tensor:
    """``weight=None`` gives PAC pooling: ``out[b, c, p] = sum_t kernel[b, t, p] * input[b, c, src(p, t)]``."""
    b, c, h, w = input.shape
    ho, wo = _out_size(h, w, kernel_size, stride, padding, dilation)
    taps = kernel_size[0] * kernel_size[1]
    cols = F.unfold(input, kernel_size, dilation, padding, stride).view(b, c, taps, ho, wo)
    cols = cols * kernel.view(b, 1, taps, ho, wo)
    if weight is None:
        return cols.sum(2)
    out = torch.einsum('bcthw,oct->bohw', cols, weight.reshape(weight.shape[0], c, taps))
    return out if bias is None else out + bias.view(1, -1, 1, 1)


def _tap_view(padded: torch.Tensor, ty: int, tx: int, out: Pair, s: Pair, d: Pair) -> torch.Tensor:
    y0, x0 = ty * d[0], tx * d[1]
    return padded[:, :, y0 : y0 + (out[0] - 1) * s[0] + 1 : s[0], x0 : x0 + (out[1] - 1) * s[1] + 1 : s[1]]


def pac_conv2d_taps(
    input: torch.Tensor,
    kernel: torch.Tensor,
    weight: Optional[torch.Tensor],
    bias: Optional[torch.Tensor],
    kernel_size: Pair,
    stride: Pair,
    padding: Pair,
    dilation: Pair,
) -> torch.Tensor:
    b, c, h, w = input.shape
    ho, wo = _out_size(h, w, kernel_size, stride, padding, dilation)
    padded = F.pad(input, [padding[1], padding[1], padding[0], padding[0]])
    out = None
    for ty in range(kernel_size[0]):
        for tx in range(kernel_size[1]):
            t = ty * kernel_size[1] + tx
            term = kernel[:, t : t + 1] * _tap_view(padded, ty, tx, (ho, wo), stride, dilation)
            if weight is not None:
                term = torch.einsum('oc,bchw->bohw', weight[:, :, ty, tx], term)
            out = term if out is None else out + term
    if weight is not None and bias is not None:
        out = out + bias.view(1, -1, 1, 1)
    return out
