"""The autocast rule of the featup ops, applied in their Python entries (so it holds for the compiled op, the
pure-PyTorch fallback, ONNX export and torch.compile alike).

Inside ``torch.autocast(device_type, dtype)`` float32, float16 and bfloat16 arguments may be mixed.
``adaptive_conv`` and the PAC ops behave as ``conv2d`` does: the result has the autocast dtype; they compute on CUDA
in the autocast dtype (the kernels accumulate in float32, ``at::opmath_type``; PAC upcasts half inputs itself), on
other devices in float32 (the CPU kernels' half paths convert element by element and run ~5-10x slower than their
float32 path, measured), cast once at entry and exit. ``local_correlation`` runs in float32 and returns float32 on
every device, as autocast does for softmax's inputs: its sums over channels are logits that overflow float16 for
large features (seen: NaN range-temperature gradients of a JBU stack under float16). float64 is never cast.
Tolerances measured against float32: docs/ops.md#autocast
"""

from __future__ import annotations

from typing import Optional, Tuple

import torch

__all__ = ['autocast_dtype', 'autocast_args', 'cast_result']

_CASTABLE = (torch.float32, torch.float16, torch.bfloat16)


def autocast_dtype(device_type: str) -> Optional[torch.dtype]:
    """The lower-precision dtype autocast is enabled with for ``device_type``, or ``None`` outside autocast."""
    if device_type not in ('cpu', 'cuda', 'xpu', 'mps', 'hpu'):
        return None
    if not torch.is_autocast_enabled(device_type):
        return None
    return torch.get_autocast_dtype(device_type)


def autocast_args(*tensors, float32: bool = False) -> Tuple[tuple, Optional[torch.dtype]]:
    """``(tensors cast to the compute dtype, dtype to cast the result to)`` under autocast on the first tensor's
    device; ``(tensors, None)`` outside it or when a float64 argument is present (then nothing is cast, and the
    op's own checks name a mismatch). ``None`` and non-tensors pass through. ``float32=True``: compute and return
    float32 on every device (an op autocast should run in float32, e.g. one whose result can overflow float16)."""
    present = [t for t in tensors if isinstance(t, torch.Tensor)]
    dtype = autocast_dtype(present[0].device.type) if present else None
    if dtype is None or any(t.is_floating_point() and t.dtype not in _CASTABLE for t in present):
        return tensors, None
    if float32:
        compute, dtype = torch.float32, None
    else:
        compute = dtype if present[0].device.type == 'cuda' else torch.float32
    cast = tuple(
        t.to(compute) if isinstance(t, torch.Tensor) and t.dtype in _CASTABLE and t.dtype != compute else t
        for t in tensors
    )
    return cast, dtype


def cast_result(out: torch.Tensor, dtype: Optional[torch.dtype]) -> torch.Tensor:
    """``out`` in the autocast dtype that :func:`autocast_args` returned (unchanged when that is None)."""
    return out if dtype is None else out.to(dtype)
