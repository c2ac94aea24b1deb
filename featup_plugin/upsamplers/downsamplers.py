"""Learned downsamplers for FeatUp's training (framework-free: torch only, any device): ``BlurDownsampler`` and
``AttentionDownsampler`` model how the backbone pools high-resolution features into its output, so the training
loss can compare ``downsampler(t(upsampled features))`` with ``backbone(t(image))``.

Derivation / details: docs/training.md#downsamplers
"""

from __future__ import annotations

from typing import Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ['BlurDownsampler', 'AttentionDownsampler', 'gaussian_blur', 'window_layout', 'build_downsampler']


def window_layout(in_size: Sequence[int], out_size: Sequence[int], kernel_size: int) -> Tuple[int, int]:
    """Strides ``(sy, sx)`` that place ``out_size`` windows of ``kernel_size`` in ``in_size`` (FeatUp's rule)."""
    (hh, ww), (h, w) = (int(in_size[0]), int(in_size[1])), (int(out_size[0]), int(out_size[1]))
    if min(h, w) < 1:
        raise ValueError(f'downsampler output size must be positive, got {h}x{w}')
    if hh < kernel_size + (h - 1) or ww < kernel_size + (w - 1):
        raise ValueError(
            f'cannot place {h}x{w} windows of {kernel_size}x{kernel_size} in a {hh}x{ww} map: the '
            f'high-resolution features must be at least {kernel_size + h - 1}x{kernel_size + w - 1}'
        )
    sy = (hh - kernel_size) // (h - 1) if h > 1 else 1
    sx = (ww - kernel_size) // (w - 1) if w > 1 else 1
    return max(sy, 1), max(sx, 1)


def gaussian_blur(x: torch.Tensor, kernel_size: int = 5, sigma: float = 1.0) -> torch.Tensor:
    """Depthwise separable Gaussian blur with reflect padding (sizes kept)."""
    r = kernel_size // 2
    t = torch.arange(kernel_size, device=x.device, dtype=x.dtype) - r
    g = torch.exp(-(t**2) / (2 * sigma**2))
    g = g / g.sum()
    c = x.shape[1]
    mode = 'reflect' if min(x.shape[-2:]) > r else 'replicate'
    x = F.pad(x, [r, r, r, r], mode=mode)
    x = F.conv2d(x, g.view(1, 1, 1, -1).expand(c, 1, 1, kernel_size), groups=c)
    return F.conv2d(x, g.view(1, 1, -1, 1).expand(c, 1, kernel_size, 1), groups=c)


def _check(hr: torch.Tensor, out_size) -> Tuple[int, int]:
    if hr.dim() != 4:
        raise ValueError(f'downsampler expects [B, C, H, W] features, got shape {tuple(hr.shape)}')
    if isinstance(out_size, int):
        out_size = (out_size, out_size)
    if len(out_size) != 2:
        raise ValueError(f'out_size must be (h, w), got {out_size!r}')
    return int(out_size[0]), int(out_size[1])


class BlurDownsampler(nn.Module):
    """A learned non-negative, normalised ``k x k`` blur applied with stride (FeatUp's ``SimpleDownsampler``)."""

    def __init__(self, kernel_size: int = 16):
        super().__init__()
        if kernel_size < 1:
            raise ValueError(f'kernel_size must be >= 1, got {kernel_size}')
        self.kernel_size = kernel_size
        self.kernel_params = nn.Parameter(torch.ones(kernel_size, kernel_size))

    def get_kernel(self) -> torch.Tensor:
        """``[k, k]``, non-negative, sums to 1."""
        k = self.kernel_params.abs()
        return k / k.sum().clamp_min(1e-12)

    def forward(self, hr: torch.Tensor, out_size) -> torch.Tensor:
        h, w = _check(hr, out_size)
        b, c, hh, ww = hr.shape
        sy, sx = window_layout((hh, ww), (h, w), self.kernel_size)
        k = self.get_kernel().to(hr.dtype).view(1, 1, self.kernel_size, self.kernel_size)
        out = F.conv2d(hr.reshape(b * c, 1, hh, ww), k, stride=(sy, sx))
        return out[:, :, :h, :w].reshape(b, c, h, w)


class AttentionDownsampler(nn.Module):
    """Attention pooling over ``k x k`` windows (FeatUp's ``AttentionDownsampler``): a softmax over each window of
    learned saliency logits weights the (blurred) features. Details: docs/training.md#downsamplers

    Args:
        dim: feature channels (the saliency is ``Linear(dim, 1)``).
        kernel_size: window size (FeatUp: 16 at 224 px for stride-16 backbones).
        blur_attn: blur the features (5x5 Gaussian, sigma 1) before pooling, as FeatUp does.
        dropout: dropout on the features entering the saliency layer (FeatUp: 0.2).
        logit_dropout: in training, the fraction of windows whose saliency logits are zeroed (uniform attention
            up to ``b``), as FeatUp's downsampler does (FeatUp: 0.2).
    """

    def __init__(
        self, dim: int, kernel_size: int = 16, blur_attn: bool = True, dropout: float = 0.2, logit_dropout: float = 0.2
    ):
        super().__init__()
        if dim < 1 or kernel_size < 1:
            raise ValueError(f'dim and kernel_size must be >= 1, got {dim}, {kernel_size}')
        for name, p in (('dropout', dropout), ('logit_dropout', logit_dropout)):
            if not 0 <= p < 1:
                raise ValueError(f'AttentionDownsampler {name} must be in [0, 1), got {p}')
        self.dim, self.kernel_size, self.blur_attn, self.logit_dropout = dim, kernel_size, blur_attn, logit_dropout
        self.attention_net = nn.Sequential(nn.Dropout(dropout), nn.Linear(dim, 1))
        self.w = nn.Parameter(torch.ones(kernel_size, kernel_size) + 0.01 * torch.randn(kernel_size, kernel_size))
        self.b = nn.Parameter(torch.zeros(kernel_size, kernel_size) + 0.01 * torch.randn(kernel_size, kernel_size))

    def attention(self, hr: torch.Tensor, out_size) -> Tuple[torch.Tensor, torch.Tensor]:
        """``(patches [B, h, w, k*k, C], weights [B, h, w, k*k])``; the weights sum to 1 over each window."""
        h, w = _check(hr, out_size)
        b, c, hh, ww = hr.shape
        if c != self.dim:
            raise ValueError(f'AttentionDownsampler({self.dim}) got {c}-channel features')
        sy, sx = window_layout((hh, ww), (h, w), self.kernel_size)
        inputs = gaussian_blur(hr, 5, 1.0) if self.blur_attn else hr
        k2 = self.kernel_size**2
        nh, nw = (hh - self.kernel_size) // sy + 1, (ww - self.kernel_size) // sx + 1
        patches = F.unfold(inputs, self.kernel_size, stride=(sy, sx)).reshape(b, c, k2, nh, nw)
        patches = patches[:, :, :, :h, :w].permute(0, 3, 4, 2, 1)  # [B, h, w, k2, C]
        logits = self.attention_net(patches).squeeze(-1)  # [B, h, w, k2]
        if self.training and self.logit_dropout > 0:
            keep = torch.rand(b, h, w, 1, device=hr.device) > self.logit_dropout
            logits = logits * keep.to(logits.dtype)
        logits = logits * self.w.reshape(1, 1, 1, k2).to(logits.dtype) + self.b.reshape(1, 1, 1, k2).to(logits.dtype)
        return patches, F.softmax(logits, dim=-1)

    def forward(self, hr: torch.Tensor, out_size) -> torch.Tensor:
        """``[B, C, h, w]``: the attention-weighted average of each window. Computed without gathering the
        windows' taps (how, and the one difference to :meth:`attention` in training: docs/training.md#downsamplers)."""
        h, w = _check(hr, out_size)
        b, c, hh, ww = hr.shape
        if c != self.dim:
            raise ValueError(f'AttentionDownsampler({self.dim}) got {c}-channel features')
        k = self.kernel_size
        sy, sx = window_layout((hh, ww), (h, w), k)
        # one window along an axis: any stride places it at 0; k makes that axis disjoint
        sy, sx = (k if h == 1 else sy), (k if w == 1 else sx)
        inputs = gaussian_blur(hr, 5, 1.0) if self.blur_attn else hr
        weights = self._window_weights(inputs, (h, w), (sy, sx))  # [B, k*k, h, w]
        if sy >= k and sx >= k:
            return self._pool_disjoint(inputs, weights, (sy, sx))
        return self._pool_overlapping(inputs, weights, (sy, sx))

    def _window_weights(self, inputs: torch.Tensor, out_size: Tuple[int, int], stride: Tuple[int, int]):
        """Softmax weights ``[B, k*k, h, w]`` of each window's taps, the saliency scored once per pixel (a 1x1
        conv of ``Dropout(inputs)``) and only the one-channel logits cut into windows."""
        b, c, hh, ww = inputs.shape
        (h, w), k = out_size, self.kernel_size
        dropout, linear = self.attention_net[0], self.attention_net[1]
        logit_map = F.conv2d(
            dropout(inputs), linear.weight.view(1, c, 1, 1).to(inputs.dtype), linear.bias.to(inputs.dtype)
        )  # [B, 1, H, W]: Linear(Dropout(feature)) per pixel
        k2 = k * k
        nh, nw = (hh - k) // stride[0] + 1, (ww - k) // stride[1] + 1
        logits = F.unfold(logit_map, k, stride=stride).reshape(b, k2, nh, nw)[:, :, :h, :w].permute(0, 2, 3, 1)
        if self.training and self.logit_dropout > 0:
            keep = torch.rand(b, h, w, 1, device=inputs.device) > self.logit_dropout
            logits = logits * keep.to(logits.dtype)
        logits = logits * self.w.reshape(1, 1, 1, k2).to(logits.dtype) + self.b.reshape(1, 1, 1, k2).to(logits.dtype)
        return F.softmax(logits, dim=-1).permute(0, 3, 1, 2)

    def _pool_disjoint(self, inputs: torch.Tensor, weights: torch.Tensor, stride: Tuple[int, int]) -> torch.Tensor:
        """Windows that do not overlap (stride >= kernel, e.g. FeatUp's 224 px / 16): every pixel has one weight,
        so the result is a sum-pool of the map times the weights folded back onto it."""
        b, _, hh, ww = inputs.shape
        k, (h, w) = self.kernel_size, weights.shape[-2:]
        nh, nw = (hh - k) // stride[0] + 1, (ww - k) // stride[1] + 1
        if (nh, nw) != (h, w):  # windows past the output size get no weight
            weights = F.pad(weights, [0, nw - w, 0, nh - h])
        wmap = F.fold(weights.reshape(b, k * k, nh * nw), (hh, ww), k, stride=stride)  # [B, 1, H, W]
        return F.avg_pool2d(inputs * wmap, k, stride=stride)[:, :, :h, :w] * (k * k)

    def _pool_overlapping(self, inputs: torch.Tensor, weights: torch.Tensor, stride: Tuple[int, int]) -> torch.Tensor:
        """Overlapping windows (stride s < kernel k, e.g. implicit FeatUp's 29 / 15): tap ``t = s q + r``
        (``r < s``) of window ``i`` reads pixel ``s (i + q) + r``, so with the map viewed as
        ``[B, C, I, s, J, s]`` each of the ``ceil(k/s)^2`` offsets ``q`` is one contraction over ``r``."""
        b, c, hh, ww = inputs.shape
        k, (h, w) = self.kernel_size, weights.shape[-2:]
        (sy, sx) = stride
        qy, qx = -(-k // sy), -(-k // sx)
        # the map padded (or cropped) to s * (h + q - 1) per axis; taps >= k get weight 0
        x = F.pad(inputs, [0, sx * (w + qx - 1) - ww, 0, sy * (h + qy - 1) - hh])
        x = x.view(b, c, h + qy - 1, sy, w + qx - 1, sx)
        wt = weights.permute(0, 2, 3, 1).reshape(b, h, w, k, k)
        wt = F.pad(wt, [0, qx * sx - k, 0, qy * sy - k]).view(b, h, w, qy, sy, qx, sx)
        out = None
        for a in range(qy):
            for e in range(qx):
                term = torch.einsum('bcisjt,bijst->bcij', x[:, :, a : a + h, :, e : e + w], wt[:, :, :, a, :, e])
                out = term if out is None else out + term
        return out


def build_downsampler(kind: str, dim: int, kernel_size: int = 16, **kwargs) -> nn.Module:
    """``'attention'`` (FeatUp's default; ``kwargs``: ``blur_attn``, ``dropout``, ``logit_dropout``) or
    ``'blur'`` (FeatUp's ``'simple'``; no ``kwargs``)."""
    if kind == 'attention':
        return AttentionDownsampler(dim, kernel_size, **kwargs)
    if kind in ('blur', 'simple'):
        if kwargs:
            raise ValueError(f'the blur downsampler takes no options, got {sorted(kwargs)}')
        return BlurDownsampler(kernel_size)
    raise ValueError(f"downsampler must be 'attention' or 'blur', got {kind!r}")
