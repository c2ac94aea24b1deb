"""``neck=dict(type='ResizeNeck', ...)``: the bilinear twin of ``FeatUpJBU`` for baselines."""

from __future__ import annotations

from typing import List, Optional, Sequence, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from mmengine.model import BaseModule
from mmseg.registry import MODELS

from ...upsamplers import ChannelNorm
from ...upsamplers.target import check_target, target_size
from ._levels import assemble, level_input, parse_levels
from ._proj import build_projections, resolve_out_channels

_MODES = ('bilinear', 'bicubic', 'nearest', 'area')


@MODELS.register_module()
class ResizeNeck(BaseModule):
    """Resizes backbone level(s) with a fixed interpolation, with FeatUpJBU's arguments for where they go.

    A baseline config swaps ``type='FeatUpJBU'`` for ``type='ResizeNeck'`` and keeps everything else: same
    levels (``in_index``), same output size (``out_size`` / ``scale_factor`` / ``output_stride``), same
    ``mode`` and the same optional channel LayerNorm, so the only difference is the upsampler. It needs no
    guidance image and runs under a plain ``EncoderDecoder`` or ``GuidedEncoderDecoder``.

    Args:
        in_channels: channels of the backbone outputs (int or list); used by ``channel_norm`` and to check
            inputs.
        in_index, out_size, scale_factor, output_stride, mode: as ``FeatUpJBU``.
        out_channels, conv_cfg, norm_cfg, act_cfg: the optional 1×1 projection after resizing, as ``FeatUpJBU``.
        interpolation: ``'bilinear'`` (default), ``'bicubic'``, ``'nearest'`` or ``'area'``.
        align_corners: for bilinear/bicubic (default False, as mmseg's ``resize``).
        channel_norm: LayerNorm over channels before resizing (default True, as ``FeatUpJBU``).
    """

    def __init__(
        self,
        in_channels: Union[int, Sequence[int]],
        in_index: Union[int, Sequence[int]] = -1,
        out_size: Optional[str] = 'image',
        scale_factor: Optional[float] = None,
        output_stride: Optional[int] = None,
        interpolation: str = 'bilinear',
        align_corners: bool = False,
        channel_norm: bool = True,
        mode: str = 'replace',
        feature_strides=None,
        out_channels: Union[None, int, Sequence[int]] = None,
        conv_cfg=None,
        norm_cfg=None,
        act_cfg=None,
        init_cfg=None,
    ):
        super().__init__(init_cfg=init_cfg)
        self.in_index, self.channels, _ = parse_levels(in_channels, in_index, mode)
        check_target(out_size, scale_factor, output_stride)
        if interpolation not in _MODES:
            raise ValueError(f'interpolation must be one of {_MODES}, got {interpolation!r}')
        self.out_size, self.scale_factor, self.output_stride = out_size, scale_factor, output_stride
        self.interpolation, self.align_corners, self.mode = interpolation, align_corners, mode
        # feature_strides is accepted (and unused) so that a FeatUpJBU config line can be swapped as is.
        self.norms = nn.ModuleList(ChannelNorm(c) if channel_norm else nn.Identity() for c in self.channels)
        self.out_channels = resolve_out_channels(out_channels, self.channels, 'ResizeNeck')
        self.projs = build_projections(self.channels, self.out_channels, conv_cfg, norm_cfg, act_cfg)

    def forward(self, inputs: Sequence[torch.Tensor], guidance: Optional[torch.Tensor] = None) -> tuple:
        inputs = list(inputs)
        if self.out_size == 'image' or self.output_stride is not None:
            if guidance is None:
                raise RuntimeError(
                    "ResizeNeck with out_size='image' or output_stride needs the image size: use "
                    "model = dict(type='GuidedEncoderDecoder'), or set scale_factor instead"
                )
            image_hw = guidance.shape[-2:]
        else:
            image_hw = None
        outs: List[torch.Tensor] = []
        for idx, c, norm in zip(self.in_index, self.channels, self.norms):
            feat = level_input(inputs, idx, c, 'ResizeNeck')
            size = target_size(feat.shape[-2:], image_hw, self.out_size, self.scale_factor, self.output_stride)
            corners = self.align_corners if self.interpolation in ('bilinear', 'bicubic') else None
            outs.append(F.interpolate(norm(feat), size=size, mode=self.interpolation, align_corners=corners))
        return assemble(inputs, outs, self.in_index, self.projs, self.mode)
