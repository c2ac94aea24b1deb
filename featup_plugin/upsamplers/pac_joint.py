"""The PAC paper's deep joint upsampling network (Su et al., CVPR 2019, section 4), written from the paper: a
guidance branch turns the high-resolution guidance into adapting features, a target branch encodes the
low-resolution input, x2 transposed PAC stages upsample it (each guided by its own slice of the adapting features
at its resolution), an optional PAC refinement and a final convolution branch predict the output::

    up = PacJointUpsampler(384, num_stages=4)
    hr = up(lr_feats, image, output_size=(224, 224))

Derivation / details: docs/pac.md#joint-upsampling-network
"""

from __future__ import annotations

from typing import List, Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..ops.pac import PacConv2d, PacConvTranspose2d
from .jbu import num_x2_stages, resize_guidance

__all__ = ['PacJointUpsampler']

Size = Tuple[int, int]


def _positive_int(name: str, v, minimum: int = 1) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < minimum:
        raise ValueError(f'PacJointUpsampler: {name} must be an int >= {minimum}, got {v!r}')
    return v


def _conv_branch(widths: Sequence[int], k: int) -> nn.Sequential:
    """``k x k`` convolutions through ``widths`` with a ReLU after each but the last."""
    layers: List[nn.Module] = []
    for i in range(len(widths) - 1):
        layers.append(nn.Conv2d(widths[i], widths[i + 1], k, padding=k // 2))
        if i < len(widths) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


def _resize(x: torch.Tensor, size: Size) -> torch.Tensor:
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    shrink = x.shape[-2] > size[0] or x.shape[-1] > size[1]
    return F.interpolate(x, size=size, mode='bilinear', align_corners=False, antialias=shrink)


class PacJointUpsampler(nn.Module):
    """Joint (guided) upsampling with transposed PAC, ``forward(source [B, C, h, w], guidance [B, C_g, H, W],
    output_size)`` -> ``[B, out_channels, *output_size]``.

    Args:
        in_channels, out_channels: widths of the source and the output (default ``out_channels = in_channels``).
        num_stages: x2 ``PacConvTranspose2d`` stages. For an ``output_size`` the first
            ``ceil(log2(output / input))`` of them run (more is a ``ValueError``), and a last bilinear resize lands
            on a size that is not ``(h, w) * 2^n``; without one all run.
        guidance_channels: channels of the guidance (RGB: 3).
        channels: width of the target branch, the stages and the hidden final layers (paper: 32).
        guidance_hidden: width of the hidden guidance layers (paper: 32).
        kernel_channels: adapting-feature channels per PAC layer (paper: 16); the guidance branch outputs
            ``kernel_channels * (num_stages + refine)``, one slice per PAC layer, resized to its resolution.
        num_target_convs, num_guidance_convs, num_final_convs: convolutions per branch (paper: 3, 3, 2), ReLU
            between them (none after a branch's last).
        kernel_size: of the branches' convolutions (paper: 5); up_kernel_size: of the PAC layers (paper: 5).
        refine: one ``PacConv2d`` (``up_kernel_size``, + ReLU) at the output resolution before the final branch,
            guided by its own slice.
        residual: add the bilinearly resized source to the output (needs ``out_channels == in_channels``); the
            final branch's last convolution then starts at zero, so the module starts as bilinear upsampling.
            Not in the paper (whose targets are depth / flow maps); useful for wide features (a neck).
        up_filler: the stages' initialisation, ``'linear'`` (bilinear x2, default) or ``'uniform'``
            (``nn.ConvTranspose2d``'s).
        kernel_type: the PAC layers' adapting kernel (``PacConv2d``'s ``kernel_type``).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: Optional[int] = None,
        num_stages: int = 3,
        guidance_channels: int = 3,
        channels: int = 32,
        guidance_hidden: int = 32,
        kernel_channels: int = 16,
        num_target_convs: int = 3,
        num_guidance_convs: int = 3,
        num_final_convs: int = 2,
        kernel_size: int = 5,
        up_kernel_size: int = 5,
        refine: bool = False,
        residual: bool = False,
        up_filler: str = 'linear',
        kernel_type: str = 'gaussian',
    ):
        super().__init__()
        out_channels = in_channels if out_channels is None else out_channels
        for name, v, lo in (
            ('in_channels', in_channels, 1),
            ('out_channels', out_channels, 1),
            ('num_stages', num_stages, 0),
            ('guidance_channels', guidance_channels, 1),
            ('channels', channels, 1),
            ('guidance_hidden', guidance_hidden, 1),
            ('kernel_channels', kernel_channels, 1),
            ('num_target_convs', num_target_convs, 1),
            ('num_guidance_convs', num_guidance_convs, 1),
            ('num_final_convs', num_final_convs, 1),
        ):
            _positive_int(name, v, lo)
        for name, k in (('kernel_size', kernel_size), ('up_kernel_size', up_kernel_size)):
            if _positive_int(name, k) % 2 == 0:
                raise ValueError(f'PacJointUpsampler: {name} must be odd, got {k}')
        if up_filler == 'linear' and up_kernel_size < 5:
            raise ValueError("PacJointUpsampler: up_filler='linear' (bilinear x2) needs up_kernel_size >= 5")
        if residual and out_channels != in_channels:
            raise ValueError(
                f'PacJointUpsampler: residual=True adds the resized source, so out_channels must equal in_channels '
                f'({in_channels}), got {out_channels}'
            )
        if num_stages + bool(refine) == 0:
            raise ValueError('PacJointUpsampler: num_stages=0 needs refine=True (else no layer is guided)')
        self.in_channels, self.out_channels, self.num_stages = in_channels, out_channels, num_stages
        self.kernel_channels, self.refine, self.residual = kernel_channels, bool(refine), bool(residual)
        n_pac = num_stages + self.refine
        self.target = _conv_branch([in_channels] + [channels] * num_target_convs, kernel_size)
        self.guidance = _conv_branch(
            [guidance_channels] + [guidance_hidden] * (num_guidance_convs - 1) + [kernel_channels * n_pac], kernel_size
        )
        p = (up_kernel_size - 1) // 2
        self.stages = nn.ModuleList(
            PacConvTranspose2d(channels, channels, up_kernel_size, 2, p, 1, kernel_type=kernel_type, filler=up_filler)
            for _ in range(num_stages)
        )
        self.refine_conv = (
            PacConv2d(channels, channels, up_kernel_size, padding=p, kernel_type=kernel_type) if self.refine else None
        )
        self.final = _conv_branch([channels] * num_final_convs + [out_channels], kernel_size)
        if self.residual:  # start as bilinear upsampling of the source
            nn.init.zeros_(self.final[-1].weight)
            nn.init.zeros_(self.final[-1].bias)

    def stage_sizes(self, in_size: Sequence[int]) -> List[Size]:
        """Output sizes of the x2 stages for a source of ``in_size``."""
        h, w = int(in_size[0]), int(in_size[1])
        return [(h * 2**i, w * 2**i) for i in range(1, self.num_stages + 1)]

    def forward(
        self, source: torch.Tensor, guidance: torch.Tensor, output_size: Optional[Sequence[int]] = None
    ) -> torch.Tensor:
        if source.dim() != 4 or source.shape[1] != self.in_channels:
            raise ValueError(
                f'PacJointUpsampler: source must be [B, {self.in_channels}, h, w], got {tuple(source.shape)}'
            )
        if guidance.dim() != 4 or guidance.shape[0] != source.shape[0]:
            raise ValueError(
                f'PacJointUpsampler: guidance must be [B={source.shape[0]}, C_g, H, W], got {tuple(guidance.shape)}'
            )
        sizes = self.stage_sizes(source.shape[-2:])
        if output_size is None:
            out_size = sizes[-1] if sizes else tuple(source.shape[-2:])
        else:
            out_size = tuple(int(s) for s in output_size)
            if len(out_size) != 2 or min(out_size) < 1:
                raise ValueError(f'PacJointUpsampler: output_size must be two positive ints, got {output_size}')
            need = num_x2_stages(max(out_size[0] / source.shape[-2], out_size[1] / source.shape[-1]), minimum=0)
            if need > self.num_stages:
                raise ValueError(
                    f'PacJointUpsampler: {tuple(source.shape[-2:])} -> {out_size} needs {need} x2 stages, the '
                    f'module has {self.num_stages}; build it with num_stages={need} or more'
                )
            sizes = sizes[:need]  # the first stages, as the JBU stack
        feats = self.guidance(resize_guidance(guidance.to(source.dtype), out_size))
        slices = feats.split(self.kernel_channels, dim=1)
        x = self.target(source)
        for stage, size, g in zip(self.stages, sizes, slices):
            x = F.relu(stage(x, resize_guidance(g, size)))
        x = _resize(x, out_size)
        if self.refine_conv is not None:
            x = F.relu(self.refine_conv(x, slices[-1]))
        out = self.final(x)
        if self.residual:
            out = out + _resize(source, out_size)
        return out

    def extra_repr(self) -> str:
        return (
            f'{self.in_channels}, {self.out_channels}, num_stages={self.num_stages}, refine={self.refine}, '
            f'residual={self.residual}'
        )
