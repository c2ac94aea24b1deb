"""``neck=dict(type='PacJointUpsampler', ...)``: the PAC paper's joint upsampling network as an MMSegmentation neck,
with FeatUpJBU's arguments for what is upsampled and where it goes, so the two guided upsamplers swap in one line.

Derivation / details: docs/pac.md#joint-upsampling-network
"""

from __future__ import annotations

from typing import List, Optional, Sequence, Union

import torch
import torch.nn as nn
from mmengine.model import BaseModule
from mmseg.registry import MODELS

from ...layers.freeze import FrozenPartsMixin
from ...upsamplers import ChannelNorm, PacJointUpsampler, num_x2_stages
from ...upsamplers.target import check_target, derive_num_stages, target_size
from ..guided import GuidedModuleMixin, missing_guidance_message
from ._levels import assemble, level_input, parse_levels
from ._proj import build_projections, resolve_out_channels

MISSING_GUIDANCE = missing_guidance_message('PacJointUpsampler', 'neck')


@MODELS.register_module(name='PacJointUpsampler')
class PacJointUpsamplerNeck(GuidedModuleMixin, FrozenPartsMixin, BaseModule):
    """Upsamples backbone feature map(s) with the PAC joint upsampling network
    (:class:`featup_plugin.upsamplers.PacJointUpsampler`: guidance branch on the image, target branch on the
    features, x2 ``PacConvTranspose2d`` stages, optional ``PacConv2d`` refinement, final convolutions), guided by
    the input image.

    Needs ``model = dict(type='GuidedEncoderDecoder')``.

    Args:
        in_channels, in_index, out_size, scale_factor, output_stride, feature_strides, num_stages, channel_norm,
            freeze_upsampler, mode, out_channels, conv_cfg, norm_cfg, act_cfg: as ``FeatUpJBU`` (same levels, same
            target sizes, same stage derivation, same optional 1x1 projection after the upsampler). A target that
            needs more x2 stages than were built is a ``ValueError``; one that is not ``2^n`` times the features is
            reached by a last bilinear resize inside the upsampler.
        channels, guidance_hidden, kernel_channels, num_target_convs, num_guidance_convs, num_final_convs,
            kernel_size, up_kernel_size, refine, up_filler, kernel_type: the network's (paper defaults 32, 32, 16,
            3, 3, 2, 5, 5; ``refine=False``; ``up_filler='linear'``: each stage starts as bilinear x2).
        residual: add the bilinearly resized features (default True: the upsampler starts as its bilinear twin,
            ``ResizeNeck``, and learns the guided correction; False: the paper's network, whose ``channels``-wide
            bottleneck then carries the whole output).
        data_mean, data_std, data_bgr: set by ``GuidedEncoderDecoder``; the guidance is ImageNet-normalised RGB
            (as FeatUpJBU's).
        init_cfg: as ``BaseModule`` (e.g. ``dict(type='Pretrained', checkpoint=..., prefix='neck.')``).
    """

    def __init__(
        self,
        in_channels: Union[int, Sequence[int]],
        in_index: Union[int, Sequence[int]] = -1,
        out_size: Optional[str] = 'image',
        scale_factor: Optional[float] = None,
        output_stride: Optional[int] = None,
        feature_strides: Union[None, int, Sequence[int]] = None,
        num_stages: Optional[int] = None,
        channels: int = 32,
        guidance_hidden: int = 32,
        kernel_channels: int = 16,
        num_target_convs: int = 3,
        num_guidance_convs: int = 3,
        num_final_convs: int = 2,
        kernel_size: int = 5,
        up_kernel_size: int = 5,
        refine: bool = False,
        residual: bool = True,
        up_filler: str = 'linear',
        kernel_type: str = 'gaussian',
        channel_norm: bool = True,
        freeze_upsampler: bool = False,
        mode: str = 'replace',
        out_channels: Union[None, int, Sequence[int]] = None,
        conv_cfg=None,
        norm_cfg=None,
        act_cfg=None,
        init_cfg=None,
    ):
        super().__init__(init_cfg=init_cfg)
        self.in_index, self.channels, chans = parse_levels(in_channels, in_index, mode)
        check_target(out_size, scale_factor, output_stride)
        self.out_size, self.scale_factor, self.output_stride = out_size, scale_factor, output_stride
        self.mode, self.freeze_upsampler = mode, freeze_upsampler
        self.num_stages = (
            [num_stages] * len(self.in_index)
            if num_stages is not None
            else derive_num_stages(self.in_index, chans, feature_strides, scale_factor, output_stride)
        )
        net = dict(
            channels=channels,
            guidance_hidden=guidance_hidden,
            kernel_channels=kernel_channels,
            num_target_convs=num_target_convs,
            num_guidance_convs=num_guidance_convs,
            num_final_convs=num_final_convs,
            kernel_size=kernel_size,
            up_kernel_size=up_kernel_size,
            refine=refine,
            residual=residual,
            up_filler=up_filler,
            kernel_type=kernel_type,
        )
        self.upsamplers = nn.ModuleList(
            PacJointUpsampler(c, c, num_stages=n, **net) for c, n in zip(self.channels, self.num_stages)
        )
        self.norms = nn.ModuleList(ChannelNorm(c) if channel_norm else nn.Identity() for c in self.channels)
        self.out_channels = resolve_out_channels(out_channels, self.channels, 'PacJointUpsampler')
        self.projs = build_projections(self.channels, self.out_channels, conv_cfg, norm_cfg, act_cfg)
        self.freeze_parts()

    def forward(self, inputs: Sequence[torch.Tensor], guidance: Optional[torch.Tensor] = None) -> tuple:
        if guidance is None:
            raise RuntimeError(MISSING_GUIDANCE)
        inputs = list(inputs)
        image = self.guidance_from_inputs(guidance)
        outs: List[torch.Tensor] = []
        for idx, c, norm, up in zip(self.in_index, self.channels, self.norms, self.upsamplers):
            feat = level_input(inputs, idx, c, 'PacJointUpsampler')
            if image.shape[0] != feat.shape[0]:
                raise ValueError('PacJointUpsampler: guidance and features have different batch sizes')
            size = target_size(feat.shape[-2:], image.shape[-2:], self.out_size, self.scale_factor, self.output_stride)
            need = num_x2_stages(max(size[0] / feat.shape[-2], size[1] / feat.shape[-1]), minimum=0)
            if need > up.num_stages:
                raise ValueError(
                    f'PacJointUpsampler: level {idx} ({tuple(feat.shape[-2:])} -> {size}) needs {need} x2 stages but '
                    f'{up.num_stages} were built: set feature_strides (or num_stages) to match the backbone'
                )
            outs.append(up(norm(feat), image.to(feat.dtype), output_size=size))
        return assemble(inputs, outs, self.in_index, self.projs, self.mode)

    def frozen_parts(self):
        return (self.upsamplers, self.norms) if self.freeze_upsampler else ()
