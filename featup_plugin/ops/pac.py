"""Pixel-adaptive convolution (PAC; Su et al., CVPR 2019, arXiv 1904.05373), written from the paper:
``v'_i = sum_{j in window(i)} K(f_i, f_j) * W[p_i - p_j] * v_j + b``, as ``PacConv2d``, ``PacConvTranspose2d`` and
``PacPool2d`` (``nn.Conv2d`` / ``nn.ConvTranspose2d`` weights) over a tiled implicit-GEMM compiled op that never
unfolds the input (``O(C * H * W + tile)`` memory).

Derivation / details: docs/pac.md#the-layer
"""

from __future__ import annotations

import math
import operator
import os
from typing import Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F

from ._autocast import autocast_args, autocast_dtype
from ._autocast import cast_result as _to
from .adaptive_conv import _use_compiled
from .pac_reference import _out_size, _tap_view, pac_conv2d_taps, pac_conv2d_unfold

__all__ = [
    'PacConv2d',
    'PacConvTranspose2d',
    'PacPool2d',
    'pac_conv2d',
    'pac_conv_transpose2d',
    'pac_pool2d',
    'pac_pool2d_channelwise',
    'pac_kernel2d',
    'parse_kernel_type',
    'bilinear_kernel1d',
    'pac_conv2d_unfold',
    'pac_conv2d_taps',
]

IntOrPair = Union[int, Sequence[int]]
Pair = Tuple[int, int]
_INV_EPS = 1e-4


def _pair(value: IntOrPair, name: str, minimum: int) -> Pair:
    vals = (value, value) if isinstance(value, int) and not isinstance(value, bool) else value
    try:
        vals = tuple(vals)
        if len(vals) != 2 or any(isinstance(v, (bool, float)) for v in vals):
            raise TypeError
        vals = tuple(operator.index(v) for v in vals)  # ints, also the 0-d tensors shapes become under tracing
    except TypeError:
        raise TypeError(f'{name} must be an int or a pair of ints, got {value!r}') from None
    if any(v < minimum for v in vals):
        raise ValueError(f'{name} must be >= {minimum}, got {value!r}')
    return vals


def _kernel_size(value: IntOrPair) -> Pair:
    k = _pair(value, 'kernel_size', 1)
    if k[0] % 2 == 0 or k[1] % 2 == 0:
        raise ValueError(f'kernel_size must be odd (PAC compares each tap with the window centre), got {value!r}')
    return k


def parse_kernel_type(kernel_type: str) -> dict:
    """``'gaussian'`` or ``'inv_{alpha}_{lambda}[_asym][_fixed]'`` -> dict(kind, alpha, lambda_, asym, fixed)."""
    if not isinstance(kernel_type, str):
        raise TypeError(f'kernel_type must be a string, got {type(kernel_type).__name__}')
    parts = kernel_type.split('_')
    flags = set()
    while parts and parts[-1] in ('asym', 'fixed'):
        flags.add(parts.pop())
    if parts == ['gaussian'] and 'fixed' not in flags:
        return dict(kind='gaussian', alpha=None, lambda_=None, asym='asym' in flags, fixed=True)
    if len(parts) == 3 and parts[0] == 'inv':
        try:
            alpha, lam = float(parts[1]), float(parts[2])
        except ValueError:
            alpha = lam = None
        if alpha is not None and math.isfinite(alpha) and math.isfinite(lam):
            return dict(kind='inv', alpha=alpha, lambda_=lam, asym='asym' in flags, fixed='fixed' in flags)
    raise ValueError(
        f"kernel_type must be 'gaussian[_asym]' or 'inv_{{alpha}}_{{lambda}}[_asym][_fixed]' "
        f"(e.g. 'inv_0.5_-2_fixed'), got {kernel_type!r}"
    )


def _smooth_kernel(smooth_kernel_type: str) -> Tuple[Optional[torch.Tensor], bool]:
    """(initial smoothing filter [1, 1, s, s] or None, learnable)."""
    if not isinstance(smooth_kernel_type, str):
        raise TypeError(f'smooth_kernel_type must be a string, got {type(smooth_kernel_type).__name__}')
    if smooth_kernel_type == 'none':
        return None, False
    if smooth_kernel_type == 'gaussian':
        k1 = torch.tensor([0.25, 0.5, 0.25])
        return (k1[:, None] * k1[None, :]).view(1, 1, 3, 3), False
    for prefix, learnable in (('average_', False), ('full_', True)):
        if smooth_kernel_type.startswith(prefix):
            try:
                s = int(smooth_kernel_type[len(prefix) :])
            except ValueError:
                break
            if s < 1 or s % 2 == 0:
                raise ValueError(f'smooth_kernel_type {smooth_kernel_type!r}: the width must be odd and >= 1')
            return torch.full((1, 1, s, s), 1.0 / (s * s)), learnable
    raise ValueError(
        "smooth_kernel_type must be 'none', 'gaussian', 'average_{s}' or 'full_{s}' (odd s), got "
        f'{smooth_kernel_type!r}'
    )


def _check_float(name: str, **tensors) -> None:
    dtype = device = None
    for n, t in tensors.items():
        if t is None:
            continue
        if not isinstance(t, torch.Tensor):
            raise TypeError(f'{name}: {n} must be a torch.Tensor, got {type(t).__name__}')
        if not t.is_floating_point():
            raise TypeError(f'{name}: {n} must be a floating point tensor, got {t.dtype}')
        if dtype is None:
            dtype, device, first = t.dtype, t.device, n
        elif t.dtype != dtype:
            raise TypeError(f'{name}: {first} and {n} must have the same dtype, got {dtype} and {t.dtype}')
        elif t.device != device:
            raise ValueError(f'{name}: {first} and {n} must be on the same device, got {device} and {t.device}')


def _tap_mask(h: int, w: int, k: Pair, s: Pair, p: Pair, d: Pair, like: torch.Tensor) -> torch.Tensor:
    """[1, T, Ho, Wo]: 1 where the tap reads a pixel inside the [h, w] input, 0 where it reads padding."""
    ones = F.pad(like.new_ones(1, 1, h, w), [p[1], p[1], p[0], p[0]])
    out = _out_size(h, w, k, s, p, d)
    return torch.cat([_tap_view(ones, ty, tx, out, s, d) for ty in range(k[0]) for tx in range(k[1])], 1)


def _window_taps(m: torch.Tensor, k: Pair, s: Pair, p: Pair, d: Pair) -> torch.Tensor:
    """``[N, T, Ho, Wo]``: the value of the ``[N, 1, H, W]`` map ``m`` that each tap of each output pixel reads
    (0 in the zero padding)."""
    out = _out_size(m.shape[-2], m.shape[-1], k, s, p, d)
    mp = F.pad(m, [p[1], p[1], p[0], p[0]])
    return torch.cat([_tap_view(mp, ty, tx, out, s, d) for ty in range(k[0]) for tx in range(k[1])], 1)


def _check_input_mask(name: str, mask, input: torch.Tensor) -> torch.Tensor:
    """The input mask as ``[1 or B, 1, H, W]`` in the input's dtype (bool / int / float accepted)."""
    if not isinstance(mask, torch.Tensor):
        raise TypeError(f'{name}: mask must be a torch.Tensor, got {type(mask).__name__}')
    b, _, h, w = input.shape
    if mask.dim() != 4 or mask.shape[1] != 1 or mask.shape[0] not in (1, b) or tuple(mask.shape[2:]) != (h, w):
        raise ValueError(
            f"{name}: mask must be [B or 1, 1, H, W] with the input's batch and size {(b, 1, h, w)} "
            f'(1 = valid pixel), got {tuple(mask.shape)}'
        )
    return mask.to(device=input.device, dtype=input.dtype)


def _partial_reweight(kern: torch.Tensor, valid: torch.Tensor, inside: torch.Tensor, normalized: bool):
    """Partial-convolution re-weighting of a kernel whose invalid taps are already 0: ``K * n_in / n_valid``
    (``n_in`` taps inside the input, ``n_valid`` valid ones; not needed for a normalised kernel) and the output
    mask ``[., 1, Ho, Wo]`` (1 where some tap is valid). docs/pac.md#input-masks-partial-convolution"""
    n_valid = valid.sum(1, keepdim=True)
    out_mask = (n_valid > 0).to(kern.dtype)
    if not normalized:
        ratio = inside.sum(1, keepdim=True) / torch.where(n_valid > 0, n_valid, torch.ones_like(n_valid)) * out_mask
        kern = kern * (ratio.unsqueeze(1) if kern.dim() == 5 else ratio)
    return kern, out_mask


def pac_kernel2d(
    guidance: torch.Tensor,
    kernel_size: IntOrPair,
    stride: IntOrPair = 1,
    padding: IntOrPair = 0,
    dilation: IntOrPair = 1,
    kernel_type: str = 'gaussian',
    inv_alpha=None,
    inv_lambda=None,
    smooth_kernel: Optional[torch.Tensor] = None,
    normalize_kernel: bool = False,
    mask: Optional[torch.Tensor] = None,
    channel_wise: bool = False,
) -> torch.Tensor:
    """The adapting kernel ``[B, kh*kw, Ho, Wo]`` of guidance ``[B, C_f, H, W]`` for a window with the given
    geometry (``Ho, Wo`` as ``nn.Conv2d``). ``mask [1 or B, kh*kw, Ho, Wo]`` overrides which taps are valid
    (default: those inside the guidance). ``inv_alpha`` / ``inv_lambda`` (floats or scalar tensors) default to
    the values in an ``'inv_{alpha}_{lambda}'`` kernel_type.

    ``channel_wise=True``: one kernel per guidance channel, ``[B, C_f, kh*kw, Ho, Wo]``, from that channel's
    differences alone (``K_c = exp(-1/2 (f_c,i - f_c,j)^2)``, no sum over channels); ``inv_alpha`` /
    ``inv_lambda`` may then hold one value per channel (``[C_f]``).
    """
    k, s = _kernel_size(kernel_size), _pair(stride, 'stride', 1)
    p, d = _pair(padding, 'padding', 0), _pair(dilation, 'dilation', 1)
    spec = parse_kernel_type(kernel_type)
    if not isinstance(guidance, torch.Tensor) or not guidance.is_floating_point():
        raise TypeError('pac_kernel2d: guidance must be a floating point torch.Tensor')
    if guidance.dim() != 4 or guidance.numel() == 0:
        raise ValueError(
            f'pac_kernel2d: guidance must be a non-empty 4-D [B, C, H, W] tensor, got shape {tuple(guidance.shape)}'
        )
    b, _, h, w = guidance.shape
    ho, wo = _out_size(h, w, k, s, p, d)
    if ho < 1 or wo < 1:
        raise ValueError(
            f'pac_kernel2d: guidance {tuple(guidance.shape)} is too small for kernel_size={k}, '
            f'padding={p}, dilation={d}'
        )
    if autocast_dtype(guidance.device.type) is not None and guidance.dtype in (torch.float16, torch.bfloat16):
        guidance = guidance.float()  # autocast: the kernel in float32 (exp of channel sums; docs/ops.md#autocast)
    gp = F.pad(guidance, [p[1], p[1], p[0], p[0]])
    cy, cx = (k[0] - 1) // 2, (k[1] - 1) // 2
    if smooth_kernel is None:
        center = _tap_view(gp, cy, cx, (ho, wo), s, d)
    else:
        sk = smooth_kernel.to(guidance.dtype)
        n, c = gp.shape[:2]
        sm = F.conv2d(gp.reshape(n * c, 1, *gp.shape[2:]), sk, padding=(sk.shape[-2] // 2, sk.shape[-1] // 2))
        center = _tap_view(sm.view(n, c, *gp.shape[2:]), cy, cx, (ho, wo), s, d)
    dists = []
    for ty in range(k[0]):
        for tx in range(k[1]):
            diff = _tap_view(gp, ty, tx, (ho, wo), s, d) - center
            if spec['asym']:
                diff = F.relu(diff)
            dists.append(diff * diff if channel_wise else (diff * diff).sum(1, keepdim=True))
    x = torch.stack(dists, 2) if channel_wise else torch.cat(dists, 1)
    taps = 2 if channel_wise else 1  # the tap axis
    if spec['kind'] == 'gaussian':
        kern = torch.exp(-0.5 * x)
    else:
        alpha = spec['alpha'] if inv_alpha is None else inv_alpha
        lam = spec['lambda_'] if inv_lambda is None else inv_lambda
        if channel_wise:
            alpha, lam = (_per_channel(v, x.shape[1], n) for v, n in ((alpha, 'inv_alpha'), (lam, 'inv_lambda')))
        kern = alpha + torch.pow(x + _INV_EPS, 0.5 * lam)
    if mask is None:
        mask = _tap_mask(h, w, k, s, p, d, guidance)
    mask = mask.to(kern.dtype)
    kern = kern * (mask.unsqueeze(1) if channel_wise else mask)
    if normalize_kernel:
        norm = kern.sum(taps, keepdim=True)
        kern = kern / torch.where(norm == 0, torch.ones_like(norm), norm)
    return kern


def _per_channel(value, channels: int, name: str):
    """A scalar, or ``[C]`` values viewed as ``[1, C, 1, 1, 1]`` for a channel-wise kernel."""
    if isinstance(value, torch.Tensor) and value.numel() > 1:
        if value.numel() != channels:
            raise ValueError(f'pac_kernel2d: {name} has {value.numel()} values for {channels} guidance channels')
        return value.reshape(1, channels, 1, 1, 1)
    return value


@torch.compiler.assume_constant_result
def _tile_bytes(device_type: str) -> int:
    """The column-tile budget of the compiled op (``FEATUP_PAC_TILE_MB``, default 64 MiB on CUDA, 8 MiB else).
    Read at each eager call; under torch.compile, once, at trace time (a constant of the graph)."""
    env = os.environ.get('FEATUP_PAC_TILE_MB')
    mb = float(env) if env else (64.0 if device_type == 'cuda' else 8.0)
    if mb <= 0:
        raise ValueError(f'FEATUP_PAC_TILE_MB must be positive, got {env!r}')
    return int(mb * 2**20)


def _as_taps(kernel: torch.Tensor, k: Pair, name: str) -> torch.Tensor:
    if kernel.dim() == 6:
        if kernel.shape[1] != 1 or tuple(kernel.shape[2:4]) != k:
            raise ValueError(f'{name}: a 6-D kernel must be [B, 1, {k[0]}, {k[1]}, Ho, Wo], got {tuple(kernel.shape)}')
        return kernel.reshape(kernel.shape[0], k[0] * k[1], *kernel.shape[4:])
    if kernel.dim() != 4:
        raise ValueError(
            f'{name}: kernel must be [B, kh*kw, Ho, Wo] (or [B, 1, kh, kw, Ho, Wo]), got shape {tuple(kernel.shape)}'
        )
    return kernel


def _run(name: str, input, kernel, weight, bias, k: Pair, s: Pair, p: Pair, d: Pair) -> torch.Tensor:
    """Shared checks and dispatch of pac_conv2d / pac_pool2d (weight None)."""
    _check_float(name, input=input, kernel=kernel, weight=weight, bias=bias)
    if input.dim() != 4 or input.numel() == 0:
        raise ValueError(f'{name}: input must be a non-empty 4-D [B, C, H, W] tensor, got shape {tuple(input.shape)}')
    kernel = _as_taps(kernel, k, name)
    b, c, h, w = input.shape
    ho, wo = _out_size(h, w, k, s, p, d)
    if ho < 1 or wo < 1:
        raise ValueError(
            f'{name}: input {tuple(input.shape)} is too small for kernel_size={k}, padding={p}, dilation={d}'
        )
    if tuple(kernel.shape) != (b, k[0] * k[1], ho, wo):
        raise ValueError(
            f'{name}: kernel must be [B, kh*kw, Ho, Wo] = {(b, k[0] * k[1], ho, wo)} for input '
            f'{tuple(input.shape)}, got {tuple(kernel.shape)}'
        )
    if weight is not None:
        if weight.dim() != 4 or weight.shape[1:] != (c, k[0], k[1]):
            raise ValueError(
                f'{name}: weight must be [O, {c}, {k[0]}, {k[1]}] for an input with {c} channels, '
                f'got {tuple(weight.shape)}'
            )
        if bias is not None and tuple(bias.shape) != (weight.shape[0],):
            raise ValueError(f'{name}: bias must be [{weight.shape[0]}], got {tuple(bias.shape)}')
    if not _use_compiled(input):
        return pac_conv2d_taps(input, kernel, weight, bias, k, s, p, d)
    dtype = input.dtype
    if dtype not in (torch.float32, torch.float64):
        input, kernel = input.float(), kernel.float()
        weight = None if weight is None else weight.float()
        bias = None if bias is None else bias.float()
    geom = [k[0], k[1], s[0], s[1], p[0], p[1], d[0], d[1]]
    # torch.ops.featup.pac_forward: conv (weight given) or pooling (weight None); autograd in ops/_library.py.
    out = torch.ops.featup.pac_forward(input, kernel, weight, bias, geom, _tile_bytes(input.device.type))
    return out.to(dtype)


def pac_conv2d(
    input: torch.Tensor,
    kernel: torch.Tensor,
    weight: torch.Tensor,
    bias: Optional[torch.Tensor] = None,
    stride: IntOrPair = 1,
    padding: IntOrPair = 0,
    dilation: IntOrPair = 1,
    shared_filters: bool = False,
) -> torch.Tensor:
    """PAC with a precomputed adapting kernel ``[B, kh*kw, Ho, Wo]`` and a Conv2d ``weight [O, C, kh, kw]``
    (``[1, 1, kh, kw]`` with ``shared_filters``). Autocast: docs/ops.md#autocast."""
    (input, kernel, weight, bias), out_dtype = autocast_args(input, kernel, weight, bias)
    return _to(_pac_conv2d(input, kernel, weight, bias, stride, padding, dilation, shared_filters), out_dtype)


def _pac_conv2d(input, kernel, weight, bias, stride, padding, dilation, shared_filters) -> torch.Tensor:
    if not isinstance(weight, torch.Tensor) or weight.dim() != 4:
        raise ValueError('pac_conv2d: weight must be a 4-D tensor [O, C, kh, kw]')
    k = _kernel_size(tuple(weight.shape[2:]))
    s, p, d = _pair(stride, 'stride', 1), _pair(padding, 'padding', 0), _pair(dilation, 'dilation', 1)
    if shared_filters:
        if weight.shape[:2] != (1, 1):
            raise ValueError(f'pac_conv2d: shared_filters needs weight [1, 1, kh, kw], got {tuple(weight.shape)}')
        _check_float('pac_conv2d', kernel=kernel, weight=weight)
        kernel = _as_taps(kernel, k, 'pac_conv2d') * weight.reshape(1, -1, 1, 1)
        out = _run('pac_conv2d', input, kernel, None, None, k, s, p, d)
        if bias is not None:
            if tuple(bias.shape) != (out.shape[1],):
                raise ValueError(f'pac_conv2d: bias must be [{out.shape[1]}], got {tuple(bias.shape)}')
            out = out + bias.view(1, -1, 1, 1)
        return out
    return _run('pac_conv2d', input, kernel, weight, bias, k, s, p, d)


def pac_pool2d(
    input: torch.Tensor,
    kernel: torch.Tensor,
    kernel_size: IntOrPair,
    stride: IntOrPair = 1,
    padding: IntOrPair = 0,
    dilation: IntOrPair = 1,
) -> torch.Tensor:
    """``out[b, c, p] = sum_t kernel[b, t, p] * input[b, c, src(p, t)]``. Autocast: docs/ops.md#autocast."""
    (input, kernel), out_dtype = autocast_args(input, kernel)
    k = _kernel_size(kernel_size)
    s, p, d = _pair(stride, 'stride', 1), _pair(padding, 'padding', 0), _pair(dilation, 'dilation', 1)
    return _to(_run('pac_pool2d', input, kernel, None, None, k, s, p, d), out_dtype)


def _zero_insert(input: torch.Tensor, s: Pair, k: Pair, p: Pair, op: Pair, d: Pair) -> torch.Tensor:
    """The input of the stride-1 convolution that a transposed convolution is: samples spread ``s`` apart,
    padded by ``d*(k-1) - p`` (plus ``output_padding`` at the bottom / right; negative pads crop)."""
    b, c, h, w = input.shape
    if s != (1, 1):
        z = input.new_zeros(b, c, (h - 1) * s[0] + 1, (w - 1) * s[1] + 1)
        z[:, :, :: s[0], :: s[1]] = input
    else:
        z = input
    qy, qx = d[0] * (k[0] - 1) - p[0], d[1] * (k[1] - 1) - p[1]
    return F.pad(z, [qx, qx + op[1], qy, qy + op[0]])


def _transposed_geometry(h, w, k, s, p, op, d) -> Pair:
    return (
        (h - 1) * s[0] - 2 * p[0] + d[0] * (k[0] - 1) + op[0] + 1,
        (w - 1) * s[1] - 2 * p[1] + d[1] * (k[1] - 1) + op[1] + 1,
    )


def _check_transposed(s: Pair, p: Pair, op: Pair, d: Pair) -> None:
    if op[0] >= max(s[0], d[0]) or op[1] >= max(s[1], d[1]):
        raise ValueError(f'output_padding {op} must be smaller than stride {s} or dilation {d}')


def pac_conv_transpose2d(
    input: torch.Tensor,
    kernel: torch.Tensor,
    weight: torch.Tensor,
    bias: Optional[torch.Tensor] = None,
    stride: IntOrPair = 1,
    padding: IntOrPair = 0,
    output_padding: IntOrPair = 0,
    dilation: IntOrPair = 1,
    shared_filters: bool = False,
) -> torch.Tensor:
    """Transposed PAC. ``weight [C, O, kh, kw]`` as ``nn.ConvTranspose2d``; ``kernel [B, kh*kw, Ho, Wo]`` at the
    output resolution, tap ``t`` comparing output pixel ``i`` with output position ``i + (t - centre) * d``.
    Equals ``conv_transpose2d`` when ``kernel == 1``; never an unfold. Derivation: docs/pac.md#transposed-pac
    """
    (input, kernel, weight, bias), out_dtype = autocast_args(input, kernel, weight, bias)
    if not isinstance(weight, torch.Tensor) or weight.dim() != 4:
        raise ValueError('pac_conv_transpose2d: weight must be a 4-D tensor [C, O, kh, kw]')
    _check_float('pac_conv_transpose2d', input=input, weight=weight)
    if input.dim() != 4 or input.numel() == 0:
        raise ValueError(f'pac_conv_transpose2d: input must be a non-empty 4-D tensor, got {tuple(input.shape)}')
    k = _kernel_size(tuple(weight.shape[2:]))
    s, p, d = _pair(stride, 'stride', 1), _pair(padding, 'padding', 0), _pair(dilation, 'dilation', 1)
    op = _pair(output_padding, 'output_padding', 0)
    _check_transposed(s, p, op, d)
    if not shared_filters and weight.shape[0] != input.shape[1]:
        raise ValueError(
            f'pac_conv_transpose2d: weight must be [C={input.shape[1]}, O, kh, kw], got {tuple(weight.shape)}'
        )
    z = _zero_insert(input, s, k, p, op, d)
    w_eff = weight.flip(2, 3) if shared_filters else weight.transpose(0, 1).flip(2, 3)
    return _to(_pac_conv2d(z, kernel, w_eff, bias, 1, 0, d, shared_filters), out_dtype)


class _PacModule(nn.Module):
    """Holds the adapting-kernel settings and parameters shared by the three layers."""

    def __init__(self, kernel_size, stride, padding, dilation, kernel_type, smooth_kernel_type, normalize_kernel):
        super().__init__()
        self.kernel_size = _kernel_size(kernel_size)
        self.stride = _pair(stride, 'stride', 1)
        self.padding = _pair(padding, 'padding', 0)
        self.dilation = _pair(dilation, 'dilation', 1)
        self.kernel_type = kernel_type
        self.smooth_kernel_type = smooth_kernel_type
        self.normalize_kernel = bool(normalize_kernel)
        self.channel_wise = False
        spec = parse_kernel_type(kernel_type)
        if spec['kind'] == 'inv':
            alpha, lam = torch.tensor(spec['alpha']), torch.tensor(spec['lambda_'])
            if spec['fixed']:
                self.register_buffer('inv_alpha', alpha)
                self.register_buffer('inv_lambda', lam)
            else:
                self.inv_alpha = nn.Parameter(alpha)
                self.inv_lambda = nn.Parameter(lam)
        else:
            self.inv_alpha = self.inv_lambda = None
        sk, learnable = _smooth_kernel(smooth_kernel_type)
        if sk is None:
            self.smooth_kernel = None
        elif learnable:
            self.smooth_kernel = nn.Parameter(sk)
        else:
            self.register_buffer('smooth_kernel', sk)

    def _kernel(self, guidance, stride, padding, mask=None):
        return pac_kernel2d(
            guidance,
            self.kernel_size,
            stride,
            padding,
            self.dilation,
            self.kernel_type,
            self.inv_alpha,
            self.inv_lambda,
            self.smooth_kernel,
            self.normalize_kernel,
            mask,
            self.channel_wise,
        )

    def compute_kernel(self, guidance: torch.Tensor) -> torch.Tensor:
        """The adapting kernel ``[B, kh*kw, Ho, Wo]`` this layer uses for ``guidance``."""
        return self._kernel(guidance, self.stride, self.padding)

    def _masked_kernel(self, name: str, input, guidance, kernel, mask):
        """(kernel re-weighted for the input ``mask`` as a partial convolution, output mask ``[B, 1, Ho, Wo]``)."""
        if kernel is not None or guidance is None:
            raise ValueError(
                f'{name}: mask= re-weights the adapting kernel the layer computes: pass guidance (not kernel) with it'
            )
        m = _check_input_mask(name, mask, input)
        geom = (self.kernel_size, self.stride, self.padding, self.dilation)
        valid = _window_taps(m, *geom)
        inside = _tap_mask(*input.shape[-2:], *geom, m)
        kern = self._kernel(guidance, self.stride, self.padding, valid)
        kern, out_mask = _partial_reweight(kern, valid, inside, self.normalize_kernel)
        return kern, out_mask.expand(input.shape[0], -1, -1, -1)

    def _select_kernel(self, guidance, kernel, name):
        if (guidance is None) == (kernel is None):
            raise ValueError(
                f'{name}.forward: pass exactly one of guidance (to compute the adapting kernel) and '
                'kernel (precomputed)'
            )
        return self.compute_kernel(guidance) if kernel is None else kernel

    def _init_filters(
        self, name: str, in_channels: int, out_channels: int, bias: bool, shared_filters: bool, transposed: bool
    ) -> None:
        """Checks the channel arguments and creates ``weight`` / ``bias`` with ``nn.Conv2d``'s (or, transposed,
        ``nn.ConvTranspose2d``'s) names, shapes and initialisation."""
        for n, v in (('in_channels', in_channels), ('out_channels', out_channels)):
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f'{name}: {n} must be a positive int, got {v!r}')
        if shared_filters and in_channels != out_channels:
            raise ValueError(
                f'{name}: shared_filters needs in_channels == out_channels, got {in_channels} and {out_channels}'
            )
        self.in_channels, self.out_channels, self.shared_filters = in_channels, out_channels, bool(shared_filters)
        wshape = (
            (1, 1) if shared_filters else (in_channels, out_channels) if transposed else (out_channels, in_channels)
        )
        self.weight = nn.Parameter(torch.empty(*wshape, *self.kernel_size))
        self.bias = nn.Parameter(torch.empty(out_channels)) if bias else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """As ``nn.Conv2d`` / ``nn.ConvTranspose2d``: kaiming-uniform weight (a=sqrt(5)), bias uniform in
        +-1/sqrt(fan_in), fan_in from ``weight.shape[1:]``."""
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        if self.bias is not None:
            fan_in = self.weight.shape[1] * self.kernel_size[0] * self.kernel_size[1]
            nn.init.uniform_(self.bias, -1 / math.sqrt(fan_in), 1 / math.sqrt(fan_in))

    def extra_repr(self) -> str:
        s = f'kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}'
        if self.dilation != (1, 1):
            s += f', dilation={self.dilation}'
        s += f', kernel_type={self.kernel_type!r}'
        if self.smooth_kernel_type != 'none':
            s += f', smooth_kernel_type={self.smooth_kernel_type!r}'
        if self.normalize_kernel:
            s += ', normalize_kernel=True'
        return s


class PacConv2d(_PacModule):
    """Pixel-adaptive ``nn.Conv2d``: ``forward(input, guidance)`` (guidance ``[B, C_f, H, W]`` at the input's
    resolution) or ``forward(input, kernel=K)`` with a precomputed adapting kernel ``[B, kh*kw, Ho, Wo]``.

    Args:
        in_channels, out_channels, kernel_size (odd), stride, padding, dilation, bias: as ``nn.Conv2d``, with its
            ``weight [O, C, kh, kw]`` / ``bias [O]`` names, shapes and initialisation (a Conv2d state dict loads;
            see :meth:`from_conv`). Taps in the zero padding get ``K = 0``; with ``K == 1`` this is ``nn.Conv2d``.
        kernel_type: ``'gaussian'`` (``K = exp(-||f_i - f_j||^2 / 2)``) or ``'inv_{alpha}_{lambda}'``
            (``K = alpha + (||f_i - f_j||^2 + 1e-4)^(lambda / 2)``, alpha / lambda learnable, or buffers with the
            suffix ``'_fixed'``); suffix ``'_asym'``: rectified differences ``relu(f_j - f_i)``.
        smooth_kernel_type: ``'none'``, or compare the neighbours with a smoothed centre: ``'gaussian'`` (3x3
            binomial), ``'average_{s}'`` or ``'full_{s}'`` (learnable, initialised to the average).
        normalize_kernel: divide ``K`` by its sum over the taps of each output pixel.
        shared_filters: one ``k x k`` filter for all channels (``weight [1, 1, kh, kw]``, needs
            ``in_channels == out_channels``).

    ``forward(input, guidance, mask=M)`` with an input mask ``M [B or 1, 1, H, W]`` (1 = valid pixel) is a
    partial convolution: taps on invalid pixels get ``K = 0``, the rest are scaled by ``n_in / n_valid`` (taps
    inside the input over valid taps; not with ``normalize_kernel``, which already renormalises), outputs with no
    valid tap are 0 (bias included); it returns ``(output, output_mask)``, ``output_mask [B, 1, Ho, Wo]`` 1 where
    some tap was valid. An all-ones mask gives the unmasked output.

    Details: docs/pac.md#adapting-kernels, docs/pac.md#input-masks-partial-convolution
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: IntOrPair,
        stride: IntOrPair = 1,
        padding: IntOrPair = 0,
        dilation: IntOrPair = 1,
        bias: bool = True,
        kernel_type: str = 'gaussian',
        smooth_kernel_type: str = 'none',
        normalize_kernel: bool = False,
        shared_filters: bool = False,
    ):
        super().__init__(kernel_size, stride, padding, dilation, kernel_type, smooth_kernel_type, normalize_kernel)
        self._init_filters('PacConv2d', in_channels, out_channels, bias, shared_filters, transposed=False)

    @classmethod
    def from_conv(cls, conv: nn.Conv2d, **pac_kwargs) -> 'PacConv2d':
        """A PacConv2d with ``conv``'s geometry and a copy of its weight / bias (same device and dtype)."""
        if not isinstance(conv, nn.Conv2d):
            raise TypeError(f'PacConv2d.from_conv expects an nn.Conv2d, got {type(conv).__name__}')
        if conv.groups != 1:
            raise ValueError(f'PacConv2d.from_conv: grouped convolutions are not supported (groups={conv.groups})')
        if conv.padding_mode != 'zeros':
            raise ValueError(f"PacConv2d.from_conv: padding_mode must be 'zeros', got {conv.padding_mode!r}")
        k = tuple(conv.kernel_size)
        if k[0] % 2 == 0 or k[1] % 2 == 0:
            raise ValueError(f'PacConv2d.from_conv: kernel_size must be odd, got {k}')
        padding = conv.padding
        if isinstance(padding, str):  # 'same' / 'valid'
            padding = (0, 0) if padding == 'valid' else tuple(d * (kk - 1) // 2 for d, kk in zip(conv.dilation, k))
        pac = cls(
            conv.in_channels,
            conv.out_channels,
            k,
            tuple(conv.stride),
            tuple(padding),
            tuple(conv.dilation),
            bias=conv.bias is not None,
            **pac_kwargs,
        )
        pac.to(device=conv.weight.device, dtype=conv.weight.dtype)
        with torch.no_grad():
            pac.weight.copy_(conv.weight)
            if conv.bias is not None:
                pac.bias.copy_(conv.bias)
        return pac

    def forward(
        self,
        input: torch.Tensor,
        guidance: Optional[torch.Tensor] = None,
        kernel: Optional[torch.Tensor] = None,
        mask: Optional[torch.Tensor] = None,
    ):
        if guidance is not None and isinstance(input, torch.Tensor) and isinstance(guidance, torch.Tensor):
            if (
                guidance.dim() != 4
                or input.dim() != 4
                or guidance.shape[0] != input.shape[0]
                or guidance.shape[2:] != input.shape[2:]
            ):
                raise ValueError(
                    f"PacConv2d: guidance must be [B, C_f, H, W] with the input's batch and size, got "
                    f'input {tuple(input.shape)} and guidance {tuple(guidance.shape)}'
                )
        if mask is None:
            kern = self._select_kernel(guidance, kernel, 'PacConv2d')
        else:
            kern, out_mask = self._masked_kernel('PacConv2d', input, guidance, kernel, mask)
        out = pac_conv2d(
            input, kern, self.weight, self.bias, self.stride, self.padding, self.dilation, self.shared_filters
        )
        return out if mask is None else (out * out_mask, out_mask)

    def extra_repr(self) -> str:
        s = f'{self.in_channels}, {self.out_channels}, ' + super().extra_repr()
        if self.bias is None:
            s += ', bias=False'
        if self.shared_filters:
            s += ', shared_filters=True'
        return s


_FILLERS = ('uniform', 'linear')


def bilinear_kernel1d(size: int, factor: int) -> torch.Tensor:
    """The 1-D tent ``max(0, 1 - |x - c| / f)`` over taps ``x = 0..size-1`` for upsampling by ``f = factor``:
    centred on the middle tap ``c = (size - 1) / 2`` for odd ``f`` and half a tap after it for even ``f`` (the
    half-pixel offset of ``align_corners=False``). ``size`` is odd (PAC kernels are)."""
    if factor < 1 or size % 2 == 0:
        raise ValueError(f'bilinear_kernel1d: needs an odd size and factor >= 1, got size={size}, factor={factor}')
    c = (size - 1) / 2 + (0.5 if factor % 2 == 0 else 0.0)
    x = torch.arange(size, dtype=torch.float64)
    return (1 - (x - c).abs() / factor).clamp(min=0)


def _linear_filler_size(factor: int) -> int:
    """The smallest odd kernel size that holds the whole tent for ``factor``."""
    return 2 * factor + 1 if factor % 2 == 0 else 2 * factor - 1


class PacConvTranspose2d(_PacModule):
    """Pixel-adaptive ``nn.ConvTranspose2d``; guidance ``[B, C_f, Ho, Wo]`` at the OUTPUT resolution.

    Arguments as ``nn.ConvTranspose2d`` (``weight [C, O, kh, kw]``; with ``K == 1`` it equals
    ``nn.ConvTranspose2d``) plus the adapting-kernel options of :class:`PacConv2d`, and:

    Args:
        filler: the weight initialisation. ``'uniform'`` (default): ``nn.ConvTranspose2d``'s (kaiming-uniform
            weight, uniform bias). ``'linear'``: bilinear upsampling by the stride ``f``; ``weight[c, o] = 0``
            for ``c != o`` and the separable tent ``t_h(y) * t_w(x)`` for ``c == o`` (:func:`bilinear_kernel1d`:
            ``max(0, 1 - |x - c| / f)``), bias 0. Needs ``in_channels == out_channels``, ``dilation == 1`` and a
            kernel that holds the tent (``kernel_size >= 2f + 1`` for even ``f``, ``2f - 1`` for odd ``f``), else
            a ``ValueError``. With ``kernel_size = 2f + 1``, ``padding = f/2 + 1``, ``output_padding = 1`` (even
            ``f``: 5 / 2 / 1 for x2, 9 / 3 / 1 for x4; odd ``f``: ``kernel_size = 2f - 1``, ``padding = (f - 1)/2``,
            ``output_padding = 0``) the output is ``f`` times the input size and, with ``K == 1``, equals
            ``F.interpolate(mode='bilinear', align_corners=False)`` except in the outer ``f // 2`` output pixels
            (where the zero padding darkens it; bilinear clamps). ``reset_parameters()`` re-applies the filler.

    ``forward(input, guidance, mask=M)``: ``M [B or 1, 1, H, W]`` at the INPUT resolution, a partial
    convolution as in :class:`PacConv2d` (``n_in`` counts the taps landing on input samples); returns
    ``(output, output_mask)`` with ``output_mask [B, 1, Ho, Wo]``.

    Details: docs/pac.md#transposed-pac, docs/pac.md#input-masks-partial-convolution
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: IntOrPair,
        stride: IntOrPair = 1,
        padding: IntOrPair = 0,
        output_padding: IntOrPair = 0,
        dilation: IntOrPair = 1,
        bias: bool = True,
        kernel_type: str = 'gaussian',
        smooth_kernel_type: str = 'none',
        normalize_kernel: bool = False,
        shared_filters: bool = False,
        filler: str = 'uniform',
    ):
        super().__init__(kernel_size, stride, padding, dilation, kernel_type, smooth_kernel_type, normalize_kernel)
        self.output_padding = _pair(output_padding, 'output_padding', 0)
        _check_transposed(self.stride, self.padding, self.output_padding, self.dilation)
        if filler not in _FILLERS:
            raise ValueError(f'PacConvTranspose2d: filler must be one of {_FILLERS}, got {filler!r}')
        if filler == 'linear':
            if in_channels != out_channels:
                raise ValueError(
                    "PacConvTranspose2d: filler='linear' (bilinear upsampling, one tent per channel) needs "
                    f'in_channels == out_channels, got {in_channels} and {out_channels}'
                )
            if self.dilation != (1, 1):
                raise ValueError(f"PacConvTranspose2d: filler='linear' needs dilation 1, got {self.dilation}")
            need = tuple(_linear_filler_size(f) for f in self.stride)
            if self.kernel_size[0] < need[0] or self.kernel_size[1] < need[1]:
                raise ValueError(
                    f"PacConvTranspose2d: filler='linear' with stride {self.stride} needs kernel_size >= {need} "
                    f'to hold the bilinear tent, got {self.kernel_size}'
                )
        self.filler = filler
        self._init_filters('PacConvTranspose2d', in_channels, out_channels, bias, shared_filters, transposed=True)

    def reset_parameters(self) -> None:
        """Initialises ``weight`` / ``bias`` with the layer's ``filler`` (see the class docstring)."""
        if self.filler != 'linear':
            return super().reset_parameters()
        (kh, kw), (sh, sw) = self.kernel_size, self.stride
        tent = bilinear_kernel1d(kh, sh)[:, None] * bilinear_kernel1d(kw, sw)[None, :]
        with torch.no_grad():
            self.weight.zero_()
            for c in range(self.weight.shape[0]):  # [C, C, kh, kw] (or [1, 1, kh, kw] with shared_filters)
                self.weight[c, c] = tent.to(self.weight.dtype)
            if self.bias is not None:
                self.bias.zero_()

    def output_size(self, h: int, w: int) -> Pair:
        return _transposed_geometry(
            h, w, self.kernel_size, self.stride, self.padding, self.output_padding, self.dilation
        )

    def compute_kernel(self, guidance: torch.Tensor, input_size: Optional[Pair] = None) -> torch.Tensor:
        """Kernel at the output resolution (stride 1, 'same' padding). With ``input_size``, taps that land on
        the inserted zeros or the padding get ``K = 0`` (this matters only with ``normalize_kernel``)."""
        k, d = self.kernel_size, self.dilation
        same = (d[0] * (k[0] - 1) // 2, d[1] * (k[1] - 1) // 2)
        mask = None
        if input_size is not None:
            ones = guidance.new_ones(1, 1, *input_size)
            z = _zero_insert(ones, self.stride, k, self.padding, self.output_padding, d)
            ho, wo = guidance.shape[-2:]
            mask = torch.cat([_tap_view(z, ty, tx, (ho, wo), (1, 1), d) for ty in range(k[0]) for tx in range(k[1])], 1)
        return self._kernel(guidance, 1, same, mask)

    def _zero_inserted_taps(self, m: torch.Tensor, out: Pair) -> torch.Tensor:
        """``[N, T, Ho, Wo]``: the value of the input-resolution map ``m [N, 1, H, W]`` that each tap of each
        output pixel reads in the zero-inserted input (0 on the inserted zeros and the padding)."""
        k, d = self.kernel_size, self.dilation
        z = _zero_insert(m, self.stride, k, self.padding, self.output_padding, d)
        return torch.cat([_tap_view(z, ty, tx, out, (1, 1), d) for ty in range(k[0]) for tx in range(k[1])], 1)

    def forward(
        self,
        input: torch.Tensor,
        guidance: Optional[torch.Tensor] = None,
        kernel: Optional[torch.Tensor] = None,
        mask: Optional[torch.Tensor] = None,
    ):
        if (guidance is None) == (kernel is None):
            raise ValueError('PacConvTranspose2d.forward: pass exactly one of guidance and kernel')
        if mask is not None and guidance is None:
            raise ValueError(
                'PacConvTranspose2d: mask= re-weights the adapting kernel the layer computes: pass guidance '
                '(not kernel) with it'
            )
        if guidance is not None:
            _check_float('PacConvTranspose2d', input=input, guidance=guidance)
            if input.dim() != 4 or guidance.dim() != 4:
                raise ValueError('PacConvTranspose2d: input and guidance must be 4-D')
            out = self.output_size(*input.shape[2:])
            if guidance.shape[0] != input.shape[0] or tuple(guidance.shape[2:]) != out:
                raise ValueError(
                    f'PacConvTranspose2d: guidance must be [B={input.shape[0]}, C_f, {out[0]}, {out[1]}] '
                    f'(the output resolution), got {tuple(guidance.shape)}'
                )
            if mask is None:
                kernel = self.compute_kernel(guidance, tuple(input.shape[2:]))
            else:
                m = _check_input_mask('PacConvTranspose2d', mask, input)
                k, d = self.kernel_size, self.dilation
                valid = self._zero_inserted_taps(m, out)
                inside = self._zero_inserted_taps(torch.ones_like(m[:1]), out)
                same = (d[0] * (k[0] - 1) // 2, d[1] * (k[1] - 1) // 2)
                kernel, out_mask = _partial_reweight(
                    self._kernel(guidance, 1, same, valid), valid, inside, self.normalize_kernel
                )
                out_mask = out_mask.expand(input.shape[0], -1, -1, -1)
        result = pac_conv_transpose2d(
            input,
            kernel,
            self.weight,
            self.bias,
            self.stride,
            self.padding,
            self.output_padding,
            self.dilation,
            self.shared_filters,
        )
        return result if mask is None else (result * out_mask, out_mask)

    def extra_repr(self) -> str:
        s = f'{self.in_channels}, {self.out_channels}, ' + super().extra_repr()
        if self.output_padding != (0, 0):
            s += f', output_padding={self.output_padding}'
        if self.bias is None:
            s += ', bias=False'
        if self.filler != 'uniform':
            s += f', filler={self.filler!r}'
        return s


def pac_pool2d_channelwise(
    input: torch.Tensor,
    kernel: torch.Tensor,
    kernel_size: IntOrPair,
    stride: IntOrPair = 1,
    padding: IntOrPair = 0,
    dilation: IntOrPair = 1,
) -> torch.Tensor:
    """PAC pooling with one kernel per channel: ``out[b, c, p] = sum_t kernel[b, c, t, p] * input[b, c, src(p, t)]``
    for ``kernel [B, C, kh*kw, Ho, Wo]`` (or ``[B, C, kh, kw, Ho, Wo]``); the channels run as batch entries of
    :func:`pac_pool2d`."""
    k = _kernel_size(kernel_size)
    if not isinstance(input, torch.Tensor) or input.dim() != 4:
        raise ValueError('pac_pool2d_channelwise: input must be a 4-D [B, C, H, W] tensor')
    if not isinstance(kernel, torch.Tensor) or kernel.dim() not in (5, 6):
        raise ValueError('pac_pool2d_channelwise: kernel must be [B, C, kh*kw, Ho, Wo] or [B, C, kh, kw, Ho, Wo]')
    b, c = input.shape[:2]
    if kernel.dim() == 6:
        if tuple(kernel.shape[2:4]) != k:
            raise ValueError(f'pac_pool2d_channelwise: a 6-D kernel must be [B, C, {k[0]}, {k[1]}, Ho, Wo]')
        kernel = kernel.reshape(*kernel.shape[:2], k[0] * k[1], *kernel.shape[4:])
    if tuple(kernel.shape[:3]) != (b, c, k[0] * k[1]):
        raise ValueError(
            f'pac_pool2d_channelwise: kernel must be [B={b}, C={c}, {k[0] * k[1]}, Ho, Wo] for input '
            f'{tuple(input.shape)}, got {tuple(kernel.shape)}'
        )
    out = pac_pool2d(
        input.reshape(b * c, 1, *input.shape[2:]),
        kernel.reshape(b * c, *kernel.shape[2:]),
        k,
        stride,
        padding,
        dilation,
    )
    return out.view(b, c, *out.shape[2:])


class PacPool2d(_PacModule):
    """Pixel-adaptive pooling: ``out_c = sum_t K_t * v_c,shifted`` (no weight); guidance at the input's
    resolution. Default ``stride=1`` (a filter, as PAC's pooling), ``normalize_kernel=False``.

    Args:
        channel_wise: one adapting kernel per channel, ``K_c = k(f_c,i, f_c,j)`` from guidance channel ``c`` alone
            (the guidance must have the input's channels); ``compute_kernel`` then returns
            ``[B, C, kh*kw, Ho, Wo]``, and ``forward(kernel=...)`` takes that (or ``[B, C, kh, kw, Ho, Wo]``).
        channels: the number of channels; needed for ``channel_wise`` with a learnable ``'inv_*'`` kernel, whose
            ``inv_alpha`` / ``inv_lambda`` then hold one value per channel (optional otherwise, then checked
            against the input).
        ``mask=``: an input mask, as :class:`PacConv2d` (partial pooling; returns ``(output, output_mask)``).

    Details: docs/pac.md#channel-wise-kernels-pacpool2d
    """

    def __init__(
        self,
        kernel_size: IntOrPair,
        stride: IntOrPair = 1,
        padding: IntOrPair = 0,
        dilation: IntOrPair = 1,
        kernel_type: str = 'gaussian',
        smooth_kernel_type: str = 'none',
        normalize_kernel: bool = False,
        channel_wise: bool = False,
        channels: Optional[int] = None,
    ):
        super().__init__(kernel_size, stride, padding, dilation, kernel_type, smooth_kernel_type, normalize_kernel)
        if channels is not None and (isinstance(channels, bool) or not isinstance(channels, int) or channels < 1):
            raise ValueError(f'PacPool2d: channels must be a positive int or None, got {channels!r}')
        self.channel_wise, self.channels = bool(channel_wise), channels
        if self.channel_wise and isinstance(self.inv_alpha, nn.Parameter):
            if channels is None:
                raise ValueError(
                    f'PacPool2d: channel_wise with the learnable kernel_type {kernel_type!r} needs channels= '
                    "(one inv_alpha / inv_lambda per channel), or use the '_fixed' suffix"
                )
            self.inv_alpha = nn.Parameter(self.inv_alpha.detach().repeat(channels))
            self.inv_lambda = nn.Parameter(self.inv_lambda.detach().repeat(channels))

    def forward(
        self,
        input: torch.Tensor,
        guidance: Optional[torch.Tensor] = None,
        kernel: Optional[torch.Tensor] = None,
        mask: Optional[torch.Tensor] = None,
    ):
        if guidance is not None and isinstance(input, torch.Tensor) and isinstance(guidance, torch.Tensor):
            if (
                guidance.dim() != 4
                or input.dim() != 4
                or guidance.shape[0] != input.shape[0]
                or guidance.shape[2:] != input.shape[2:]
                or (self.channel_wise and guidance.shape[1] != input.shape[1])
            ):
                raise ValueError(
                    f"PacPool2d: guidance must be [B, C_f, H, W] with the input's batch and size"
                    f'{" and channels (channel_wise)" if self.channel_wise else ""}, got '
                    f'input {tuple(input.shape)} and guidance {tuple(guidance.shape)}'
                )
        if self.channels is not None and isinstance(input, torch.Tensor) and input.dim() == 4:
            if input.shape[1] != self.channels:
                raise ValueError(f'PacPool2d: built for {self.channels} channels, got input {tuple(input.shape)}')
        if mask is None:
            kern = self._select_kernel(guidance, kernel, 'PacPool2d')
        else:
            kern, out_mask = self._masked_kernel('PacPool2d', input, guidance, kernel, mask)
        geom = (self.kernel_size, self.stride, self.padding, self.dilation)
        out = pac_pool2d_channelwise(input, kern, *geom) if self.channel_wise else pac_pool2d(input, kern, *geom)
        return out if mask is None else (out * out_mask, out_mask)

    def extra_repr(self) -> str:
        s = super().extra_repr()
        if self.channel_wise:
            s += ', channel_wise=True'
        return s
