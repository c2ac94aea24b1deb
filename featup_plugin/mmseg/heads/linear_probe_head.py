"""``decode_head=dict(type='LinearProbeHead', ...)``: FeatUp's linear probe head (a 1x1 conv) as an mmseg decode head.

FeatUp's full protocol (upsampler trained label-free, then frozen with the backbone) is
``featup_plugin.evaluation.probe``; this head trains with whatever the config leaves trainable."""

from __future__ import annotations

from typing import List, Sequence, Union

import torch
import torch.nn as nn
from mmcv.cnn import build_norm_layer
from mmseg.models.decode_heads.decode_head import BaseDecodeHead
from mmseg.registry import MODELS


@MODELS.register_module()
class LinearProbeHead(BaseDecodeHead):
    """A 1×1 convolution from (upsampled) features to class logits, as in FeatUp's linear-probe evaluation.

    The head has no hidden layers, so the segmentation quality it reaches measures the features (and their
    resolution) rather than the head. mmseg upsamples the logits to the label size in the loss and at inference,
    bilinearly; with the ``FeatUpJBU`` neck at ``out_size='image'`` they already have that size.

    Args:
        in_channels: channels of the chosen input (or a list with ``input_transform='resize_concat'``).
        norm_cfg: optional normalisation of the features before the 1×1 conv, e.g. ``dict(type='BN')``
            (DINOv2's linear heads use BatchNorm); None (default) keeps the probe strictly linear.
        dropout_ratio: dropout before the conv (default 0: a probe).
        Other arguments as ``BaseDecodeHead`` (``num_classes``, ``in_index``, ``input_transform``,
        ``loss_decode``, ``ignore_index``, ``align_corners``, ``init_cfg``).

    ``channels`` equals the input channels and is derived, so configs do not give it.
    """

    def __init__(
        self,
        in_channels: Union[int, Sequence[int]],
        *,
        num_classes: int,
        dropout_ratio: float = 0.0,
        norm_cfg=None,
        **kwargs,
    ):
        if 'channels' in kwargs:
            raise TypeError('LinearProbeHead has no hidden layer: do not set `channels` (it is the input width)')
        input_transform = kwargs.get('input_transform')
        if input_transform == 'resize_concat':
            if not isinstance(in_channels, (list, tuple)):
                raise ValueError("input_transform='resize_concat' needs in_channels as a list")
            channels = int(sum(in_channels))
        elif isinstance(in_channels, (list, tuple)):
            if input_transform != 'multiple_select':
                raise ValueError(
                    'in_channels is a list: set input_transform to "resize_concat" (one probe on '
                    'the concatenated levels) or give one int with one in_index'
                )
            raise ValueError(
                "LinearProbeHead predicts from one map: input_transform='multiple_select' is not "
                "supported; use 'resize_concat'"
            )
        else:
            channels = int(in_channels)
        super().__init__(
            in_channels, channels, num_classes=num_classes, dropout_ratio=dropout_ratio, norm_cfg=norm_cfg, **kwargs
        )
        self.input_norm = build_norm_layer(norm_cfg, channels)[1] if norm_cfg is not None else nn.Identity()

    def forward(self, inputs: List[torch.Tensor]) -> torch.Tensor:
        x = self._transform_inputs(inputs)
        if x.shape[1] != self.channels:
            raise ValueError(
                f'LinearProbeHead expects {self.channels} input channels, got {x.shape[1]} '
                f'(check in_channels / in_index)'
            )
        return self.cls_seg(self.input_norm(x))
