"""The JBU primitives over the registered compiled ops (``torch.ops.featup.adaptive_conv`` /
``local_correlation``): ``adaptive_conv`` (a per-pixel ``k x k`` filter shared by all channels) and
``local_correlation`` (its filter gradient, and the JBU range-kernel logits). Each is the other's gradient, so the
backward passes reuse the same two kernels (double backward works); the formulas are registered in ``_library``.

Derivation / details: docs/ops.md#adaptive-convolution-and-local-correlation
"""

from __future__ import annotations

import math
import warnings

import torch
import torch.nn.functional as F

from . import _backend
from ._autocast import autocast_args
from ._autocast import cast_result as _to
from .reference import adaptive_conv_taps, adaptive_conv_unfold, local_correlation_taps, local_correlation_unfold

__all__ = ['adaptive_conv', 'local_correlation', 'adaptive_conv_reference', 'local_correlation_reference']

adaptive_conv_reference = adaptive_conv_unfold
local_correlation_reference = local_correlation_unfold

_warned_no_cuda = False


def _check_tensors(name: str, a: torch.Tensor, an: str, b: torch.Tensor, bn: str) -> None:
    for t, n in ((a, an), (b, bn)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f'{name}: {n} must be a torch.Tensor, got {type(t).__name__}')
        if not t.is_floating_point():
            raise TypeError(f'{name}: {n} must be a floating point tensor, got {t.dtype}')
    if a.dtype != b.dtype:
        raise TypeError(f'{name}: {an} and {bn} must have the same dtype, got {a.dtype} and {b.dtype}')
    if a.device != b.device:
        raise ValueError(f'{name}: {an} and {bn} must be on the same device, got {a.device} and {b.device}')


def _check_adaptive_conv(input: torch.Tensor, filters: torch.Tensor) -> int:
    _check_tensors('adaptive_conv', input, 'input', filters, 'filters')
    if input.dim() != 4:
        raise ValueError(f'adaptive_conv: input must be 4-D [B, C, H+k-1, W+k-1], got shape {tuple(input.shape)}')
    if filters.dim() != 5:
        raise ValueError(f'adaptive_conv: filters must be 5-D [B, H, W, k, k], got shape {tuple(filters.shape)}')
    b, h, w, k, k2 = filters.shape
    if k != k2:
        raise ValueError(f'adaptive_conv: filters must be square k x k windows, got {k} x {k2}')
    if k % 2 == 0:
        raise ValueError(f'adaptive_conv: the window size k must be odd, got k={k}')
    if input.numel() == 0 or filters.numel() == 0:
        raise ValueError(
            f'adaptive_conv: empty tensors are not supported, got input {tuple(input.shape)} '
            f'and filters {tuple(filters.shape)}'
        )
    if input.shape[0] != b:
        raise ValueError(
            f'adaptive_conv: input and filters must have the same batch size, got {input.shape[0]} and {b}'
        )
    if input.shape[2] != h + k - 1 or input.shape[3] != w + k - 1:
        raise ValueError(
            f'adaptive_conv: input spatial size must be (H+k-1, W+k-1) = ({h + k - 1}, {w + k - 1}) '
            f'for filters {tuple(filters.shape)}, got {tuple(input.shape[2:])}'
        )
    return k


def _check_local_correlation(center: torch.Tensor, padded: torch.Tensor) -> int:
    _check_tensors('local_correlation', center, 'center', padded, 'padded')
    if center.dim() != 4 or padded.dim() != 4:
        raise ValueError(
            'local_correlation: center and padded must be 4-D, got shapes '
            f'{tuple(center.shape)} and {tuple(padded.shape)}'
        )
    if center.numel() == 0 or padded.numel() == 0:
        raise ValueError(
            'local_correlation: empty tensors are not supported, got shapes '
            f'{tuple(center.shape)} and {tuple(padded.shape)}'
        )
    if center.shape[:2] != padded.shape[:2]:
        raise ValueError(
            'local_correlation: center and padded must have the same batch and channel sizes, got '
            f'{tuple(center.shape)} and {tuple(padded.shape)}'
        )
    k = padded.shape[2] - center.shape[2] + 1
    if k < 1 or padded.shape[3] - center.shape[3] + 1 != k or k % 2 == 0:
        raise ValueError(
            'local_correlation: padded must be center padded by the same odd window k on both axes '
            f'(H+k-1, W+k-1), got {tuple(center.shape)} and {tuple(padded.shape)}'
        )
    return k


def flip_taps(kernel: torch.Tensor, k: int) -> torch.Tensor:
    """Re-indexes a tap-major kernel ``[B, k*k, H, W]`` for the transposed op: returns ``K'``
    ``[B, k*k, H+k-1, W+k-1]`` such that the input gradient is ``adaptive_conv(pad(G, k-1), K')``. ``O(k*k*H*W)``
    memory. Derivation: docs/ops.md#gradients-the-two-ops-are-each-others-gradients
    """
    # Eager: one as_strided view (about 4x faster than slicing at k=7, 224x224). Under torch.compile (the backward
    # formulas are traced by AOT autograd): plain slicing. With the as_strided form, which relies on the exact
    # memory layout of an intermediate, inductor (torch 2.13, default caches on) gave wrong range-kernel gradients
    # for a compiled JBUStack (tests/ops/test_registration.py::test_compile_fullgraph_jbu_stack_inductor).
    return _flip_taps_sliced(kernel, k) if torch.compiler.is_compiling() else _flip_taps_strided(kernel, k)


def _flip_taps_strided(kernel: torch.Tensor, k: int) -> torch.Tensor:
    b, t, h, w = kernel.shape
    p = k - 1
    kf = F.pad(kernel, [p, p, p, p]).flip(1).contiguous()
    hq, wq = h + 2 * p, w + 2 * p
    hp, wp = h + p, w + p
    view = kf.view(b, k, k, hq, wq).as_strided(
        (b, k, k, hp, wp), (t * hq * wq, k * hq * wq + wq, hq * wq + 1, wq, 1), kf.storage_offset()
    )
    return view.reshape(b, t, hp, wp)


def _flip_taps_sliced(kernel: torch.Tensor, k: int) -> torch.Tensor:
    # kf[b, i, j] is tap (k-1-i, k-1-j) padded by k-1; tap (i, j) of K' is kf[b, i, j] shifted by (i, j) pixels:
    # rows first (k slices), then columns (k slices).
    b, t, h, w = kernel.shape
    p = k - 1
    hp, wp = h + p, w + p
    kf = F.pad(kernel, [p, p, p, p]).flip(1).view(b, k, k, h + 2 * p, w + 2 * p)
    rows = torch.stack([kf[:, i, :, i : i + hp] for i in range(k)], 1)
    return torch.stack([rows[:, :, j, :, j : j + wp] for j in range(k)], 2).reshape(b, t, hp, wp)


#: Whether the compiled module registers ``featup::adaptive_conv_transpose`` (set by ``_library``; modules built
#: before it have only the two forward ops, and the transposed op then runs as the forward on flipped copies).
_HAS_TRANSPOSE_OP = False


def _enable_transpose_op() -> None:
    global _HAS_TRANSPOSE_OP
    _HAS_TRANSPOSE_OP = True


def _taps_k(taps: int) -> int:
    k = math.isqrt(int(taps))
    if k * k != taps or k % 2 == 0:
        raise ValueError(f'kernel must have k*k taps for an odd k, got {taps}')
    return k


def _transpose(grad: torch.Tensor, kernel: torch.Tensor, k: int) -> torch.Tensor:
    """``dX[b,c,y,x] = sum_{i,j} K[b,i*k+j,y-i,x-j] * grad[b,c,y-i,x-j]``: the input gradient of the op, by the
    transposed kernel (taps read in place); without it, the forward on ``pad(grad)`` and :func:`flip_taps`."""
    if _HAS_TRANSPOSE_OP:
        return torch.ops.featup.adaptive_conv_transpose(grad, kernel)
    p = k - 1
    return torch.ops.featup.adaptive_conv(F.pad(grad, [p, p, p, p]), flip_taps(kernel, k))


@torch.compiler.assume_constant_result
def _warn_no_cuda_kernels() -> bool:
    """Warns once per process that CUDA tensors use the reference (a constant under torch.compile: it runs once,
    at trace time, instead of breaking the graph)."""
    global _warned_no_cuda
    if not _warned_no_cuda:
        _warned_no_cuda = True
        warnings.warn(
            'featup_plugin: the compiled op has no CUDA kernels (built without a CUDA toolkit); '
            'CUDA tensors use the pure-PyTorch reference. Rebuild with FORCE_CUDA=1.',
            RuntimeWarning,
            stacklevel=4,
        )
    return True


def _use_compiled(x: torch.Tensor) -> bool:
    """Whether the registered op (``torch.ops.featup.*``) serves tensors on x's device, else the tap-loop reference
    runs: under ONNX export / ``torch.jit.trace``, without a compiled module, for CUDA tensors when the module has no
    CUDA kernels (one warning) and for devices other than CPU, CUDA and meta (shapes only, the fake kernels).
    Traceable by torch.compile (``served_devices`` is a graph constant)."""
    if torch.onnx.is_in_onnx_export() or torch.jit.is_tracing():
        return False
    served = _backend.served_devices()
    kind = x.device.type
    if kind in served:
        return True
    if kind == 'cuda' and served:
        _warn_no_cuda_kernels()
    return False


def _like_input(out: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    if x.dim() == 4 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last):
        return out.contiguous(memory_format=torch.channels_last)
    return out


def adaptive_conv(input: torch.Tensor, filters: torch.Tensor) -> torch.Tensor:
    """Per-pixel ``k x k`` filtering of an already padded ``input`` with ``filters``:
    ``out[b,c,h,w] = sum_{i,j} filters[b,h,w,i,j] * input[b,c,h+i,w+j]``.

    Args:
        input: ``[B, C, H+k-1, W+k-1]``, floating point (non-contiguous and channels_last tensors accepted).
        filters: ``[B, H, W, k, k]`` with odd ``k``, same dtype and device as ``input``.

    Returns:
        ``[B, C, H, W]`` in the input's memory format; differentiable in both arguments (double backward too).

    Raises:
        ValueError: wrong ndim, non-square or even windows, inconsistent sizes, empty tensors, different devices.
        TypeError: non-tensor, non-floating or mismatched dtypes.

    Under ``torch.autocast`` the arguments may have different float dtypes; the result has the autocast dtype
    (docs/ops.md#autocast).
    """
    (input, filters), out_dtype = autocast_args(input, filters)
    k = _check_adaptive_conv(input, filters)
    if not _use_compiled(input):
        return _to(adaptive_conv_taps(input, filters), out_dtype)
    b, h, w = filters.shape[:3]
    # A view (no copy) when filters is a permuted [B, k*k, H, W] tensor, as the JBU upsampler makes it.
    kernel = filters.permute(0, 3, 4, 1, 2).reshape(b, k * k, h, w)
    return _to(_like_input(torch.ops.featup.adaptive_conv(input, kernel), input), out_dtype)


def local_correlation(center: torch.Tensor, padded: torch.Tensor) -> torch.Tensor:
    """Dot products of each pixel of ``center`` with its ``k x k`` neighbours in ``padded``:
    ``out[b,i*k+j,h,w] = sum_c center[b,c,h,w] * padded[b,c,h+i,w+j]``.

    Args:
        center: ``[B, C, H, W]``, floating point.
        padded: ``[B, C, H+k-1, W+k-1]`` (odd ``k``), same dtype and device as ``center``.

    Returns:
        ``[B, k*k, H, W]`` (tap ``i*k + j``); differentiable in both arguments (double backward too).

    Raises:
        ValueError, TypeError: as :func:`adaptive_conv`.

    Under ``torch.autocast`` it computes and returns float32 (its sums over channels are logits that can overflow
    float16; docs/ops.md#autocast).
    """
    (center, padded), out_dtype = autocast_args(center, padded, float32=True)
    _check_local_correlation(center, padded)
    if not _use_compiled(center):
        return _to(local_correlation_taps(center, padded), out_dtype)
    return _to(torch.ops.featup.local_correlation(center, padded), out_dtype)
