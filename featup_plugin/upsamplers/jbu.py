"""FeatUp's joint bilateral upsampler (JBU): one stage (``JBULearnedRange``: a learned range kernel times a spatial
Gaussian, filtering bicubic-upsampled features) and the stack (``JBUStack``), with FeatUp's parameter names and
forward pass, so FeatUp state dicts load; beyond FeatUp, the stack reaches any output size (:func:`plan_stage_sizes`).

Derivation / details: docs/jbu.md#one-stage-jbulearnedrange
"""

from __future__ import annotations

import math
from typing import List, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..ops import adaptive_conv, local_correlation
from ..ops.upsample import upsample_bicubic_pad

__all__ = ['JBULearnedRange', 'JBUStack', 'plan_stage_sizes', 'num_x2_stages', 'resize_guidance']

Size = Tuple[int, int]


def _pad(x: torch.Tensor, r: int) -> torch.Tensor:
    """Reflect padding by ``r`` (FeatUp's choice); replicate when the map is too small to reflect."""
    if r == 0:
        return x
    mode = 'reflect' if min(x.shape[-2:]) > r else 'replicate'
    return F.pad(x, [r, r, r, r], mode=mode)


def resize_guidance(image: torch.Tensor, size: Size) -> torch.Tensor:
    """The guidance for a stage of output ``size``: ``adaptive_avg_pool2d`` of the image, as FeatUp does, also
    when a side grows (why: docs/jbu.md#guidance-per-stage-resize_guidance)."""
    size = (int(size[0]), int(size[1]))
    if tuple(image.shape[-2:]) == size:
        return image
    return F.adaptive_avg_pool2d(image, size)


def num_x2_stages(factor: float, minimum: int = 1) -> int:
    """The x2 stages that reach an upsampling ``factor``: ``ceil(log2(factor))`` (exact powers of two are not
    rounded up by float error), at least ``minimum``."""
    factor = float(factor)
    if not factor > 0:
        raise ValueError(f'the upsampling factor must be positive, got {factor!r}')
    return max(int(minimum), math.ceil(math.log2(factor) - 1e-9) if factor > 1 else 0)


def plan_stage_sizes(in_size: Sequence[int], out_size: Sequence[int], max_stages: Optional[int] = None) -> List[Size]:
    """Output sizes of the successive JBU stages that take ``in_size`` features to ``out_size``: x2 stages, the
    last one landing exactly on ``out_size`` (14x14 -> 224x224 gives 28, 56, 112, 224; 16x16 -> 224x224 gives 32,
    64, 128, 224). ``ValueError`` for non-positive sizes, a downsampling, or more stages than ``max_stages``.
    Derivation: docs/jbu.md#stage-planning-plan_stage_sizes
    """
    h, w = int(in_size[0]), int(in_size[1])
    oh, ow = int(out_size[0]), int(out_size[1])
    if min(h, w, oh, ow) < 1:
        raise ValueError(f'sizes must be positive, got features {h}x{w} -> output {oh}x{ow}')
    if oh < h or ow < w:
        raise ValueError(f'the JBU stack only upsamples: output {oh}x{ow} is smaller than the features {h}x{w}')
    factor = max(oh / h, ow / w)
    n = num_x2_stages(factor)
    if max_stages is not None and n > max_stages:
        raise ValueError(
            f'upsampling {h}x{w} -> {oh}x{ow} (x{factor:g}) needs {n} x2 stages but the stack has '
            f'{max_stages}; build it with num_stages={n} or more'
        )
    sizes = [(min(h * 2**i, oh), min(w * 2**i, ow)) for i in range(1, n)]
    return sizes + [(oh, ow)]


class JBULearnedRange(nn.Module):
    """One JBU stage (FeatUp's ``JBULearnedRange``): ``forward(source, guidance)`` -> features at the
    guidance's size. ``feat_dim`` is kept for signature compatibility; the stage works for any channel count.
    ``scale`` is unused (the output size is the guidance's), as in FeatUp."""

    def __init__(
        self,
        guidance_dim: int = 3,
        feat_dim: Optional[int] = None,
        key_dim: int = 32,
        scale: int = 2,
        radius: int = 3,
        dropout: float = 0.1,
    ):
        super().__init__()
        if radius < 0:
            raise ValueError(f'radius must be >= 0, got {radius}')
        self.scale = scale
        self.radius = radius
        self.diameter = 2 * radius + 1
        self.guidance_dim = guidance_dim
        self.key_dim = key_dim
        self.feat_dim = feat_dim
        taps = self.diameter**2

        self.range_temp = nn.Parameter(torch.tensor(0.0))
        self.range_proj = nn.Sequential(
            nn.Conv2d(guidance_dim, key_dim, 1, 1), nn.GELU(), nn.Dropout2d(dropout), nn.Conv2d(key_dim, key_dim, 1, 1)
        )
        self.fixup_proj = nn.Sequential(
            nn.Conv2d(guidance_dim + taps, taps, 1, 1), nn.GELU(), nn.Dropout2d(dropout), nn.Conv2d(taps, taps, 1, 1)
        )
        self.sigma_spatial = nn.Parameter(torch.tensor(1.0))

    def get_range_kernel(self, guidance: torch.Tensor) -> torch.Tensor:
        """``[B, k*k, H, W]`` softmax over the window of key dot products."""
        keys = self.range_proj(guidance)
        logits = local_correlation(keys, _pad(keys, self.radius))
        temp = self.range_temp.exp().clamp(1e-4, 1e4)
        return F.softmax(temp * logits, dim=1)

    def get_spatial_kernel(self, device=None) -> torch.Tensor:
        """``[1, k*k, 1, 1]`` Gaussian over the window (in the dtype of ``sigma_spatial``)."""
        grid = torch.linspace(-1, 1, self.diameter, device=device, dtype=self.sigma_spatial.dtype)
        d2 = grid[:, None] ** 2 + grid[None, :] ** 2
        return torch.exp(-d2 / (2 * self.sigma_spatial**2)).reshape(1, self.diameter**2, 1, 1)

    def get_kernel(self, guidance: torch.Tensor) -> torch.Tensor:
        """The combined, fixed-up kernel ``[B, k*k, H, W]`` for a guidance image ``[B, guidance_dim, H, W]``."""
        kernel = self.get_range_kernel(guidance) * self.get_spatial_kernel(guidance.device)
        kernel = kernel / kernel.sum(1, keepdim=True).clamp(1e-7)
        return kernel + 0.1 * self.fixup_proj(torch.cat([kernel, guidance], dim=1))

    def forward(self, source: torch.Tensor, guidance: torch.Tensor, premix=None) -> torch.Tensor:
        """``premix`` (internal, used by :class:`JBUStack`): a per-pixel linear map applied to ``source`` after
        the kernel is computed; it commutes with the resize, padding and filtering below."""
        if source.dim() != 4 or guidance.dim() != 4:
            raise ValueError(
                f'JBULearnedRange expects 4-D source and guidance, got {tuple(source.shape)} and '
                f'{tuple(guidance.shape)}'
            )
        if guidance.shape[1] != self.guidance_dim:
            raise ValueError(f'guidance must have {self.guidance_dim} channels, got {guidance.shape[1]}')
        if source.shape[0] != guidance.shape[0]:
            raise ValueError(f'source and guidance batch sizes differ: {source.shape[0]} vs {guidance.shape[0]}')
        b, _, gh, gw = guidance.shape
        kernel = self.get_kernel(guidance)
        if premix is not None:
            source = premix(source)
        # _pad(F.interpolate(source, (gh, gw), 'bicubic'), radius), fused into one pass on CPU for a x2 stage
        hr = upsample_bicubic_pad(source, (gh, gw), self.radius)
        kernel = kernel.to(hr.dtype).permute(0, 2, 3, 1).reshape(b, gh, gw, self.diameter, self.diameter)
        return adaptive_conv(hr, kernel)


class JBUStack(nn.Module):
    """FeatUp's JBU stack: ``num_stages`` JBU stages then ``out + 0.1 * conv1x1(dropout2d(out))``.

    ``forward(source, guidance, output_size=None, scale_factor=None)``:

    * ``source [B, feat_dim, h, w]`` low-resolution features, ``guidance [B, guidance_dim, H_img, W_img]``
      the image (FeatUp feeds ImageNet-normalised RGB).
    * Output size: ``output_size=(H, W)`` (or an int, or ``'guidance'`` for the image size), else
      ``scale_factor`` (a number, or a pair ``(sy, sx)``, rounded), else ``2 ** num_stages`` (FeatUp: x16).
      Stage sizes follow :func:`plan_stage_sizes`; when fewer stages are needed than built, the first ones
      (``up1``, ``up2``, ...) are used. Each stage's guidance is the image resized to that stage's size.

    With the defaults (4 stages, radius 3, key_dim 32, 3-channel guidance) the parameters and the forward pass
    are those of FeatUp's ``JBUStack(feat_dim)``.

    ``fuse_fixup`` (default True) evaluates the final fixup on the last stage's *input* instead of its output: the
    same result (up to float rounding) at a quarter of the cost for a x2 last stage
    (why: docs/jbu.md#the-fused-final-fixup-fuse_fixup).
    """

    def __init__(
        self,
        feat_dim: int,
        num_stages: int = 4,
        radius: int = 3,
        key_dim: int = 32,
        guidance_dim: int = 3,
        dropout: float = 0.1,
        final_dropout: float = 0.2,
        fuse_fixup: bool = True,
    ):
        super().__init__()
        self.fuse_fixup = fuse_fixup
        if num_stages < 1:
            raise ValueError(f'num_stages must be >= 1, got {num_stages}')
        self.feat_dim = feat_dim
        self.num_stages = num_stages
        self.guidance_dim = guidance_dim
        for i in range(num_stages):
            self.add_module(
                f'up{i + 1}', JBULearnedRange(guidance_dim, feat_dim, key_dim, radius=radius, dropout=dropout)
            )
        self.fixup_proj = nn.Sequential(nn.Dropout2d(final_dropout), nn.Conv2d(feat_dim, feat_dim, kernel_size=1))

    @property
    def stages(self) -> List[JBULearnedRange]:
        return [getattr(self, f'up{i + 1}') for i in range(self.num_stages)]

    def output_size_for(
        self,
        in_size: Sequence[int],
        guidance_size: Sequence[int],
        output_size: Union[None, int, str, Sequence[int]] = None,
        scale_factor: Union[None, float, Sequence[float]] = None,
    ) -> Size:
        h, w = int(in_size[0]), int(in_size[1])
        if output_size is not None:
            if scale_factor is not None:
                raise ValueError('give either output_size or scale_factor, not both')
            if isinstance(output_size, str):
                if output_size != 'guidance':
                    raise ValueError(f"output_size must be (H, W), an int or 'guidance', got {output_size!r}")
                return int(guidance_size[0]), int(guidance_size[1])
            if isinstance(output_size, int):
                return output_size, output_size
            if len(output_size) != 2:
                raise ValueError(f'output_size must be (H, W), got {output_size!r}')
            return int(output_size[0]), int(output_size[1])
        if scale_factor is not None:
            sy, sx = (scale_factor, scale_factor) if isinstance(scale_factor, (int, float)) else scale_factor
            if sy <= 0 or sx <= 0:
                raise ValueError(f'scale_factor must be positive, got {scale_factor!r}')
            return max(1, round(h * sy)), max(1, round(w * sx))
        return h * 2**self.num_stages, w * 2**self.num_stages

    def forward(
        self,
        source: torch.Tensor,
        guidance: torch.Tensor,
        output_size: Union[None, int, str, Sequence[int]] = None,
        scale_factor: Union[None, float, Sequence[float]] = None,
    ) -> torch.Tensor:
        if source.dim() != 4 or source.shape[1] != self.feat_dim:
            raise ValueError(
                f'JBUStack({self.feat_dim}) expects source [B, {self.feat_dim}, h, w], got {tuple(source.shape)}'
            )
        if guidance.dim() != 4 or guidance.shape[1] != self.guidance_dim:
            raise ValueError(f'JBUStack expects guidance [B, {self.guidance_dim}, H, W], got {tuple(guidance.shape)}')
        if source.shape[0] != guidance.shape[0]:
            raise ValueError(f'source and guidance batch sizes differ: {source.shape[0]} vs {guidance.shape[0]}')
        size = self.output_size_for(source.shape[-2:], guidance.shape[-2:], output_size, scale_factor)
        sizes = plan_stage_sizes(source.shape[-2:], size, self.num_stages)
        feats = source
        for n, (stage, stage_size) in enumerate(zip(self.stages, sizes)):
            last = n == len(sizes) - 1
            premix = self._premix if last and self.fuse_fixup else None
            feats = stage(feats, resize_guidance(guidance, stage_size), premix=premix)
        if self.fuse_fixup:
            bias = self.fixup_proj[1].bias
            # in place: feats is the last stage's fresh output (not saved for backward); a new tensor of this size
            # would cost its first-touch page faults again
            return feats if bias is None else feats.add_(0.1 * bias.view(1, -1, 1, 1).to(feats.dtype))
        return feats + 0.1 * self.fixup_proj(feats)

    def _premix(self, x: torch.Tensor) -> torch.Tensor:
        """``x + 0.1 * W @ dropout2d(x)`` (the final fixup without its bias), applied before the last stage."""
        dropout, conv = self.fixup_proj[0], self.fixup_proj[1]
        return x + 0.1 * F.conv2d(dropout(x), conv.weight)
