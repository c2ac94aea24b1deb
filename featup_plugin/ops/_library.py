"""The Python half of the ``torch.library`` registration of the featup ops: fake (shape-only) implementations, used
by ``torch.compile`` / ``torch.export`` and for ``meta`` tensors, and the autograd formulas. The schemas and the
CPU / CUDA kernels are registered in C++ (``csrc/pytorch/register_ops.cpp``); ``_backend`` calls
:func:`register_python_parts` right after them, once per process.

    featup::adaptive_conv(input [B,C,H+k-1,W+k-1], kernel [B,k*k,H,W]) -> [B,C,H,W]          (kernel tap-major)
    featup::local_correlation(center [B,C,H,W], padded [B,C,H+k-1,W+k-1]) -> [B,k*k,H,W]
    featup::adaptive_conv_transpose(grad [B,C,H,W], kernel [B,k*k,H,W]) -> [B,C,H+k-1,W+k-1]  (adaptive_conv's dX)
    featup::pac_forward(input, kernel, weight?, bias?, geom, tile_bytes) -> [B,O,Ho,Wo]       (weight None: pooling)
    featup::pac_backward(grad_out, input, kernel, weight?, geom, need_input, need_kernel, need_weight, tile_bytes)
        -> (grad_input, grad_kernel, grad_weight)      (an empty [0] tensor for a gradient not requested)
    featup::upsample2x_bicubic_pad(input [B,C,h,w], pad) -> [B,C,2h+2pad,2w+2pad]              (CPU kernel only)
    featup::upsample2x_bicubic_pad_backward(grad [B,C,2h+2pad,2w+2pad], pad) -> [B,C,h,w]     (its transpose)

Derivation / details: docs/ops.md#registration-with-torchlibrary
"""

from __future__ import annotations

import torch

from .adaptive_conv import _enable_transpose_op, _taps_k, _transpose

__all__ = ['register_python_parts', 'OPS']

OPS = ('adaptive_conv', 'local_correlation', 'adaptive_conv_transpose', 'pac_forward', 'pac_backward')
_done = []


def _check(cond, op: str, msg: str) -> None:
    torch._check(cond, lambda: f'featup::{op}: {msg}')


def _check_pair(op: str, a: torch.Tensor, an: str, b: torch.Tensor, bn: str) -> None:
    _check(a.dim() == 4 and b.dim() == 4, op, f'{an} and {bn} must be 4-D, got {a.dim()}-D and {b.dim()}-D')
    _check(a.dtype == b.dtype, op, f'{an} and {bn} must have the same dtype, got {a.dtype} and {b.dtype}')
    _check(a.shape[0] == b.shape[0], op, f'{an} and {bn} must have the same batch size')


# ------------------------------------------------------------------------------------------------ fake kernels
def _adaptive_conv_fake(input, kernel):
    _check_pair('adaptive_conv', input, 'input', kernel, 'kernel')
    return input.new_empty((input.shape[0], input.shape[1], kernel.shape[2], kernel.shape[3]))


def _local_correlation_fake(center, padded):
    _check_pair('local_correlation', center, 'center', padded, 'padded')
    k = padded.shape[2] - center.shape[2] + 1
    return center.new_empty((center.shape[0], k * k, center.shape[2], center.shape[3]))


def _adaptive_conv_transpose_fake(grad, kernel):
    _check_pair('adaptive_conv_transpose', grad, 'grad', kernel, 'kernel')
    k = _taps_k(kernel.shape[1])
    return grad.new_empty((grad.shape[0], grad.shape[1], grad.shape[2] + k - 1, grad.shape[3] + k - 1))


def _upsample2x_bicubic_pad_fake(input, pad):
    _check(input.dim() == 4, 'upsample2x_bicubic_pad', f'input must be 4-D, got {input.dim()}-D')
    b, c, h, w = input.shape
    return input.new_empty((b, c, 2 * h + 2 * pad, 2 * w + 2 * pad))


def _upsample2x_bicubic_pad_backward_fake(grad, pad):
    _check(grad.dim() == 4, 'upsample2x_bicubic_pad_backward', f'grad must be 4-D, got {grad.dim()}-D')
    b, c, hp, wp = grad.shape
    return grad.new_empty((b, c, (hp - 2 * pad) // 2, (wp - 2 * pad) // 2))


def _pac_out_size(input, geom):
    kh, kw, sh, sw, ph, pw, dh, dw = geom
    h, w = input.shape[2], input.shape[3]
    return (h + 2 * ph - dh * (kh - 1) - 1) // sh + 1, (w + 2 * pw - dw * (kw - 1) - 1) // sw + 1


def _pac_forward_fake(input, kernel, weight, bias, geom, tile_bytes):
    _check(len(geom) == 8, 'pac_forward', 'geom must be [kh, kw, sh, sw, ph, pw, dh, dw]')
    _check_pair('pac_forward', input, 'input', kernel, 'kernel')
    ho, wo = _pac_out_size(input, geom)
    out_channels = input.shape[1] if weight is None else weight.shape[0]
    return input.new_empty((input.shape[0], out_channels, ho, wo))


def _pac_backward_fake(grad_out, input, kernel, weight, geom, need_input, need_kernel, need_weight, tile_bytes):
    _check(len(geom) == 8, 'pac_backward', 'geom must be [kh, kw, sh, sw, ph, pw, dh, dw]')
    # Separate empty tensors: the outputs of an op must not alias each other.
    gi = input.new_empty(input.shape) if need_input else input.new_empty((0,))
    gk = kernel.new_empty(kernel.shape) if need_kernel else input.new_empty((0,))
    gw = weight.new_empty(weight.shape) if need_weight and weight is not None else input.new_empty((0,))
    return gi, gk, gw


# ------------------------------------------------------------------------------------------------ autograd
# adaptive_conv and local_correlation are each other's gradients (docs/ops.md#gradients-the-two-ops-are-each-
# others-gradients): the backward formulas call the registered ops again, so they are differentiable themselves
# (double backward).
def _save_inputs(ctx, inputs, output):
    ctx.save_for_backward(inputs[0], inputs[1])


def _adaptive_conv_backward(ctx, grad):
    input, kernel = ctx.saved_tensors
    k = input.shape[-1] - kernel.shape[-1] + 1
    grad_input = _transpose(grad, kernel, k) if ctx.needs_input_grad[0] else None
    grad_kernel = torch.ops.featup.local_correlation(grad, input) if ctx.needs_input_grad[1] else None
    return grad_input, grad_kernel


def _local_correlation_backward(ctx, grad):
    center, padded = ctx.saved_tensors
    k = padded.shape[-1] - center.shape[-1] + 1
    grad_center = torch.ops.featup.adaptive_conv(padded, grad) if ctx.needs_input_grad[0] else None
    grad_padded = _transpose(center, grad, k) if ctx.needs_input_grad[1] else None
    return grad_center, grad_padded


def _adaptive_conv_transpose_backward(ctx, up):
    # linear in each argument: d/dgrad = adaptive_conv(up, kernel), d/dkernel = local_correlation(grad, up)
    grad, kernel = ctx.saved_tensors
    d_grad = torch.ops.featup.adaptive_conv(up, kernel) if ctx.needs_input_grad[0] else None
    d_kernel = torch.ops.featup.local_correlation(grad, up) if ctx.needs_input_grad[1] else None
    return d_grad, d_kernel


def _upsample_setup(ctx, inputs, output):
    ctx.pad = inputs[1]


def _upsample_backward(ctx, grad):
    return torch.ops.featup.upsample2x_bicubic_pad_backward(grad, ctx.pad), None


def _upsample_backward_setup(ctx, inputs, output):
    ctx.pad = inputs[1]


def _upsample_backward_backward(ctx, grad):
    # the backward is linear in grad: its own gradient is the forward op
    return torch.ops.featup.upsample2x_bicubic_pad(grad, ctx.pad), None


def _pac_forward_setup(ctx, inputs, output):
    input, kernel, weight, bias, geom, tile_bytes = inputs
    ctx.geom, ctx.tile_bytes, ctx.has_weight = list(geom), tile_bytes, weight is not None
    ctx.save_for_backward(input, kernel, weight)


def _pac_forward_backward(ctx, grad):
    input, kernel, weight = ctx.saved_tensors
    need = ctx.needs_input_grad
    need_weight = bool(need[2]) and ctx.has_weight
    gi, gk, gw = torch.ops.featup.pac_backward(
        grad, input, kernel, weight, ctx.geom, bool(need[0]), bool(need[1]), need_weight, ctx.tile_bytes
    )
    return (
        gi if need[0] else None,
        gk if need[1] else None,
        gw if need_weight else None,
        grad.sum((0, 2, 3)) if need[3] else None,
        None,
        None,
    )


def _pac_backward_backward(ctx, *grads):
    # As @once_differentiable did for the autograd Function this replaces.
    raise RuntimeError(
        'featup::pac_backward: the compiled PAC op supports first-order gradients only (no double backward); '
        'use featup_plugin.ops.pac.pac_conv2d_taps for higher-order gradients'
    )


def _pac_backward_setup(ctx, inputs, output):
    pass


def register_python_parts() -> None:
    """Fake implementations and autograd formulas of the four ops (after their C++ schemas); once per process."""
    if _done:
        return
    lib = 'featup::'
    torch.library.register_fake(lib + 'adaptive_conv', _adaptive_conv_fake)
    torch.library.register_fake(lib + 'local_correlation', _local_correlation_fake)
    torch.library.register_fake(lib + 'pac_forward', _pac_forward_fake)
    torch.library.register_fake(lib + 'pac_backward', _pac_backward_fake)
    if hasattr(torch.ops.featup, 'upsample2x_bicubic_pad_backward'):  # not in modules built before it
        torch.library.register_fake(lib + 'upsample2x_bicubic_pad', _upsample2x_bicubic_pad_fake)
        torch.library.register_fake(lib + 'upsample2x_bicubic_pad_backward', _upsample2x_bicubic_pad_backward_fake)
        torch.library.register_autograd(
            lib + 'upsample2x_bicubic_pad', _upsample_backward, setup_context=_upsample_setup
        )
        torch.library.register_autograd(
            lib + 'upsample2x_bicubic_pad_backward',
            _upsample_backward_backward,
            setup_context=_upsample_backward_setup,
        )
    torch.library.register_autograd(lib + 'adaptive_conv', _adaptive_conv_backward, setup_context=_save_inputs)
    torch.library.register_autograd(lib + 'local_correlation', _local_correlation_backward, setup_context=_save_inputs)
    if hasattr(torch.ops.featup, 'adaptive_conv_transpose'):  # not in modules built before it
        torch.library.register_fake(lib + 'adaptive_conv_transpose', _adaptive_conv_transpose_fake)
        torch.library.register_autograd(
            lib + 'adaptive_conv_transpose', _adaptive_conv_transpose_backward, setup_context=_save_inputs
        )
        _enable_transpose_op()
    torch.library.register_autograd(lib + 'pac_forward', _pac_forward_backward, setup_context=_pac_forward_setup)
    torch.library.register_autograd(lib + 'pac_backward', _pac_backward_backward, setup_context=_pac_backward_setup)
    # Autocast: applied in the Python entries (ops/_autocast.py), so that it also covers the fallback and export.
    _done.append(True)
