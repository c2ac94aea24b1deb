"""``decode_head=dict(type='SFTGuidedHead', ...)``: a guided decoder, conditioned with SFT at every scale.

Derivation / details: docs/sft.md#sft-guided-decode-head
"""

from __future__ import annotations

import math
from typing import List, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from mmcv.cnn import ConvModule, build_activation_layer, build_norm_layer
from mmseg.models.decode_heads.decode_head import BaseDecodeHead
from mmseg.models.utils import resize
from mmseg.registry import MODELS

from ...layers import ResBlockSFT, SFTConditionNet, SFTLayer
from ...upsamplers import num_x2_stages, target_size
from ..guided import GuidedModuleMixin, missing_guidance_message

CONDITIONS = ('image', 'edges', 'image+edges', 'features', 'prior', 'prior+image')
PRIOR_CONDITIONS = ('prior', 'prior+image')
PRIOR_ARGS = ('prior_loss_weight', 'prior_detach', 'prior_channels')

MISSING_GUIDANCE = missing_guidance_message('SFTGuidedHead', 'head')


@MODELS.register_module()
class SFTGuidedHead(GuidedModuleMixin, BaseDecodeHead):
    """Upsamples decoder features stage by stage (×2 per stage) towards the image, modulating every stage with
    spatial feature transforms (SFT, ``x * (1 + gamma) + beta``) predicted from a guidance signal at that scale.
    The SFT layers start as the identity, so a fresh head is a plain convolutional upsampling decoder. The forward
    pass, stage sizes and conditions: docs/sft.md#sft-guided-decode-head

    Needs ``model = dict(type='GuidedEncoderDecoder')`` (it hands the input image to the head, each crop in slide
    inference). Works with any neck or none (with ``FeatUpJBU`` give the neck's output stride as
    ``feature_stride``).

    Args:
        in_channels, channels, num_classes, in_index, input_transform: as ``BaseDecodeHead``; ``channels`` is the
            width of the last (finest) stage, the one ``conv_seg`` reads. ``input_transform`` may be None or
            ``'resize_concat'`` (the levels are resized to the first chosen level, whose stride is
            ``feature_stride``).
        feature_stride: stride of the (first) chosen input relative to the image, e.g. 32 for ResNet's last
            stage, 16 for ViT-S/16, 4 after ``FeatUpJBU(output_stride=4)``.
        output_stride: stride of the output logits (1: image resolution, default). The head builds
            ``ceil(log2(feature_stride / output_stride))`` ×2 stages, the last one landing exactly on
            ``ceil(image / output_stride)`` (docs/sft.md#stages).
        stage_channels: widths of the ``n + 1`` scales from the input's to the output's (default: ``channels``
            at every scale); the last one must equal ``channels``.
        num_blocks: ``ResBlockSFT`` blocks per scale.
        condition: what the condition network sees: ``'image'`` (RGB, default), ``'edges'`` (per-channel Sobel
            magnitude of the RGB image at each scale), ``'image+edges'`` (both), or ``'features'`` (input level
            ``condition_index`` with ``condition_channels`` channels, e.g. FeatUpJBU's upsampled features with
            ``mode='append'``); it is resized to every scale. ``'prior'``: the softmax of a coarse segmentation
            prior the head predicts from its input (``prior_head``, ``num_classes`` logits at the input's stride;
            SFTGAN-style); ``'prior+image'``: that softmax and the RGB image. An external prior: use
            ``'features'`` (docs/sft.md#conditions).
        condition_index, condition_channels: the level and its width for ``condition='features'``.
        prior_loss_weight: ``'prior'`` / ``'prior+image'`` only (default 0.4, >= 0): weight of the auxiliary
            cross-entropy ``loss_prior`` of the prior logits (resized to the label size, ``ignore_index``
            ignored, averaged over the labelled pixels), which makes the prior a segmentation prior; 0: no
            auxiliary loss (the prior branch then learns only through the SFT layers).
        prior_detach: ``'prior'`` / ``'prior+image'`` only (default False): the condition network gets the
            prior without gradient, so the prior branch learns from ``loss_prior`` alone (needs
            ``prior_loss_weight > 0``).
        prior_channels: ``'prior'`` / ``'prior+image'`` only: None (default) makes ``prior_head`` a 1x1
            convolution to ``num_classes`` logits; an int puts a ``ConvModule`` 3x3 of that width before it.
        cond_channels: channels of the shared condition at each scale (SFTGAN: 32).
        cond_hidden_channels: width of the condition network's trunk (default ``cond_channels``).
        cond_num_convs: 3×3 convolutions in the condition trunk (shared by all scales).
        sft_hidden_channels: hidden width of each SFT layer's γ/β branches (default ``cond_channels``).
        Other arguments as ``BaseDecodeHead`` (``dropout_ratio``, ``conv_cfg``, ``norm_cfg``, ``act_cfg``,
        ``loss_decode``, ``ignore_index``, ``sampler``, ``align_corners`` (used for the stage resizes too),
        ``init_cfg``).
    """

    def __init__(
        self,
        in_channels: Union[int, Sequence[int]],
        channels: int,
        *,
        num_classes: int,
        feature_stride: int,
        output_stride: int = 1,
        stage_channels: Optional[Sequence[int]] = None,
        num_blocks: int = 1,
        condition: str = 'image',
        condition_index: Optional[int] = None,
        condition_channels: Optional[int] = None,
        cond_channels: int = 32,
        cond_hidden_channels: Optional[int] = None,
        cond_num_convs: int = 2,
        sft_hidden_channels: Optional[int] = None,
        prior_loss_weight: Optional[float] = None,
        prior_detach: Optional[bool] = None,
        prior_channels: Optional[int] = None,
        **kwargs,
    ):
        if kwargs.get('input_transform') == 'multiple_select':
            raise ValueError(
                "SFTGuidedHead decodes one map: input_transform='multiple_select' is not supported; "
                "use None or 'resize_concat'"
            )
        super().__init__(in_channels, channels, num_classes=num_classes, **kwargs)
        for name, v in (
            ('feature_stride', feature_stride),
            ('output_stride', output_stride),
            ('num_blocks', num_blocks),
        ):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f'SFTGuidedHead: {name} must be a positive int, got {v!r}')
        self.feature_stride, self.output_stride = feature_stride, output_stride
        ratio = feature_stride / output_stride
        self.num_up = num_x2_stages(ratio, minimum=0)
        n_scales = self.num_up + 1
        if stage_channels is None:
            stage_channels = [channels] * n_scales
        stage_channels = [int(c) for c in stage_channels]
        if len(stage_channels) != n_scales:
            raise ValueError(
                f'SFTGuidedHead: stage_channels needs {n_scales} widths (the input scale and '
                f'{self.num_up} x2 stages from stride {feature_stride} to {output_stride}), got '
                f'{len(stage_channels)}: {stage_channels}'
            )
        if stage_channels[-1] != channels:
            raise ValueError(
                f'SFTGuidedHead: the last of stage_channels ({stage_channels[-1]}) must equal '
                f'channels ({channels}), the width conv_seg reads'
            )
        if condition not in CONDITIONS:
            raise ValueError(f'SFTGuidedHead: condition must be one of {CONDITIONS}, got {condition!r}')
        self.condition = condition
        is_prior = condition in PRIOR_CONDITIONS
        given = [n for n, v in zip(PRIOR_ARGS, (prior_loss_weight, prior_detach, prior_channels)) if v is not None]
        if given and not is_prior:
            raise ValueError(
                f"SFTGuidedHead: {' / '.join(given)} apply only to condition='prior' or "
                f"'prior+image', not {condition!r}"
            )
        if is_prior:
            prior_loss_weight = 0.4 if prior_loss_weight is None else prior_loss_weight
            if (
                isinstance(prior_loss_weight, bool)
                or not isinstance(prior_loss_weight, (int, float))
                or not math.isfinite(prior_loss_weight)
                or prior_loss_weight < 0
            ):
                raise ValueError(f'SFTGuidedHead: prior_loss_weight must be a number >= 0, got {prior_loss_weight!r}')
            prior_detach = False if prior_detach is None else prior_detach
            if not isinstance(prior_detach, bool):
                raise ValueError(f'SFTGuidedHead: prior_detach must be a bool, got {prior_detach!r}')
            if prior_detach and prior_loss_weight == 0:
                raise ValueError(
                    'SFTGuidedHead: prior_detach=True with prior_loss_weight=0 leaves the prior branch '
                    'without any gradient; give prior_loss_weight > 0'
                )
            if prior_channels is not None and (
                isinstance(prior_channels, bool) or not isinstance(prior_channels, int) or prior_channels < 1
            ):
                raise ValueError(
                    f'SFTGuidedHead: prior_channels must be None or a positive int, got {prior_channels!r}'
                )
            if self.out_channels < 2:
                raise ValueError(
                    f'SFTGuidedHead: condition={condition!r} conditions on the softmax of '
                    f'num_classes logits; out_channels={self.out_channels} (sigmoid) is not supported'
                )
        self.prior_loss_weight = float(prior_loss_weight) if is_prior else 0.0
        self.prior_detach = bool(prior_detach)
        self.prior_channels = prior_channels
        if condition == 'features':
            if (
                not isinstance(condition_index, int)
                or isinstance(condition_index, bool)
                or not isinstance(condition_channels, int)
                or condition_channels < 1
            ):
                raise ValueError(
                    "SFTGuidedHead: condition='features' needs condition_index (an int: which input "
                    'level) and condition_channels (its width)'
                )
            cond_in, signal = condition_channels, 'raw'
        else:
            if condition_index is not None or condition_channels is not None:
                raise ValueError(
                    f'SFTGuidedHead: condition_index / condition_channels apply only to '
                    f"condition='features', not {condition!r}"
                )
            if is_prior:
                cond_in, signal = self.out_channels + (3 if condition == 'prior+image' else 0), 'raw'
            else:
                cond_in, signal = 3, {'image': 'raw', 'edges': 'edges', 'image+edges': 'raw+edges'}[condition]
        self.condition_index, self.condition_channels = condition_index, condition_channels
        self.stage_channels = stage_channels

        conv = dict(conv_cfg=self.conv_cfg, norm_cfg=self.norm_cfg, act_cfg=self.act_cfg)
        self.input_conv = ConvModule(self.in_channels, stage_channels[0], 3, padding=1, **conv)
        self.prior_head: Optional[nn.Module] = None
        if is_prior:  # coarse segmentation prior at the input's stride
            last = nn.Conv2d(prior_channels or self.in_channels, self.out_channels, 1)
            nn.init.normal_(last.weight, 0, 0.01)  # as mmseg initialises conv_seg
            nn.init.zeros_(last.bias)
            self.prior_head = (
                last
                if prior_channels is None
                else nn.Sequential(ConvModule(self.in_channels, prior_channels, 3, padding=1, **conv), last)
            )
        self.up_convs = nn.ModuleList(
            ConvModule(stage_channels[i - 1], stage_channels[i], 3, padding=1, **conv) for i in range(1, n_scales)
        )
        norm_cfg, act_cfg = self.norm_cfg, self.act_cfg
        norm_layer = (lambda c: build_norm_layer(norm_cfg, c)[1]) if norm_cfg is not None else None
        act_layer = (lambda: build_activation_layer(act_cfg)) if act_cfg is not None else nn.Identity
        self.blocks = nn.ModuleList(
            nn.ModuleList(
                ResBlockSFT(c, cond_channels, sft_hidden_channels, norm_layer=norm_layer, act_layer=act_layer)
                for _ in range(num_blocks)
            )
            for c in stage_channels
        )
        self.condition_net = SFTConditionNet(
            cond_in, cond_channels, cond_hidden_channels, num_scales=n_scales, num_convs=cond_num_convs, signal=signal
        )

    # -- weights ------------------------------------------------------------------------------------------
    def init_weights(self) -> None:
        if getattr(self, '_is_init', False):  # already initialised (maybe trained since): leave as is
            return super().init_weights()
        super().init_weights()
        cfgs = self.init_cfg if isinstance(self.init_cfg, list) else [self.init_cfg]
        if not any(isinstance(c, dict) and c.get('type') == 'Pretrained' for c in cfgs):
            for m in self.modules():  # a layer-wide init_cfg must not break the identity start of SFT
                if isinstance(m, SFTLayer):
                    m.reset_output()

    # -- guidance -----------------------------------------------------------------------------------------
    def stage_sizes(self, feat_hw: Sequence[int], image_hw: Sequence[int]) -> List[Tuple[int, int]]:
        """Sizes of the ``num_up + 1`` scales for features of ``feat_hw`` and an image of ``image_hw``."""
        h, w = int(feat_hw[0]), int(feat_hw[1])
        if self.num_up == 0:
            return [(h, w)]
        th, tw = target_size((h, w), image_hw, None, None, self.output_stride)
        ratio = max(th / h, tw / w)
        if ratio > 1.5 * 2**self.num_up:
            raise ValueError(
                f'SFTGuidedHead: features of {h}x{w} for an image of {tuple(image_hw)} have stride '
                f'~{ratio * self.output_stride:g}, but feature_stride={self.feature_stride} built '
                f'{self.num_up} x2 stage(s) to output_stride={self.output_stride}: set feature_stride '
                f"to the stride of the head's input"
            )
        sizes = [(min(h * 2**i, th), min(w * 2**i, tw)) for i in range(self.num_up)]
        return sizes + [(th, tw)]

    # -- forward ------------------------------------------------------------------------------------------
    def forward(
        self, inputs: Sequence[torch.Tensor], guidance: Optional[torch.Tensor] = None, return_prior: bool = False
    ):
        """Segmentation logits; with ``return_prior=True`` (``condition='prior'`` / ``'prior+image'``) the pair
        ``(seg_logits, prior_logits)`` of the same pass, ``prior_logits`` at the input's stride."""
        if return_prior and self.prior_head is None:
            raise ValueError(
                f"SFTGuidedHead: return_prior=True needs condition='prior' or 'prior+image', not {self.condition!r}"
            )
        if guidance is None:
            guidance = getattr(inputs, 'guidance', None)
        if guidance is None:
            raise RuntimeError(MISSING_GUIDANCE)
        image = self.guidance_from_inputs(guidance)
        x = self._transform_inputs(inputs)
        if x.shape[1] != self.in_channels:
            raise ValueError(
                f'SFTGuidedHead expects {self.in_channels} input channels, got {x.shape[1]} '
                f'(check in_channels / in_index)'
            )
        if image.shape[0] != x.shape[0]:
            raise ValueError(f'SFTGuidedHead: guidance batch {image.shape[0]} != feature batch {x.shape[0]}')
        sizes = self.stage_sizes(x.shape[-2:], image.shape[-2:])
        prior_logits = None
        if self.condition == 'features':
            try:
                source = inputs[self.condition_index]
            except IndexError:
                raise ValueError(
                    f'SFTGuidedHead: condition_index {self.condition_index} is out of range for {len(inputs)} inputs'
                )
            if source.dim() != 4 or source.shape[1] != self.condition_channels or source.shape[0] != x.shape[0]:
                raise ValueError(
                    f'SFTGuidedHead: input {self.condition_index} has shape {tuple(source.shape)}, '
                    f'condition_channels says [{x.shape[0]}, {self.condition_channels}, H, W]'
                )
        elif self.prior_head is not None:
            prior_logits = self.prior_head(x)
            prob = (prior_logits.detach() if self.prior_detach else prior_logits).softmax(1)
            source = prob if self.condition == 'prior' else [prob, image]
        else:
            source = image
        if isinstance(source, list):
            conds = self.condition_net([m.to(x.dtype) for m in source], sizes)
        else:
            conds = self.condition_net(source.to(x.dtype), sizes)
        x = self.input_conv(x)
        for i, (size, cond, blocks) in enumerate(zip(sizes, conds, self.blocks)):
            if i > 0:
                x = self.up_convs[i - 1](resize(x, size=size, mode='bilinear', align_corners=self.align_corners))
            for block in blocks:
                x = block(x, cond)
        seg_logits = self.cls_seg(x)
        return (seg_logits, prior_logits) if return_prior else seg_logits

    # -- training -----------------------------------------------------------------------------------------
    def loss(self, inputs, batch_data_samples, train_cfg) -> dict:
        """``BaseDecodeHead.loss``, plus ``loss_prior`` (``condition='prior'`` / ``'prior+image'`` with
        ``prior_loss_weight > 0``) from the prior logits of the same forward pass."""
        if self.prior_head is None:
            return super().loss(inputs, batch_data_samples, train_cfg)
        seg_logits, prior_logits = self.forward(inputs, return_prior=True)
        losses = self.loss_by_feat(seg_logits, batch_data_samples)
        if self.prior_loss_weight > 0:
            losses['loss_prior'] = self.loss_prior_by_feat(prior_logits, batch_data_samples)
        return losses

    def loss_prior_by_feat(self, prior_logits: torch.Tensor, batch_data_samples) -> torch.Tensor:
        """``prior_loss_weight`` x cross-entropy of the prior logits (bilinearly resized to the label size) over
        the pixels whose label is not ``ignore_index`` (0 when there are none)."""
        label = self._stack_batch_gt(batch_data_samples).squeeze(1).long()
        logits = resize(prior_logits, size=label.shape[-2:], mode='bilinear', align_corners=self.align_corners)
        ce = F.cross_entropy(logits.float(), label, ignore_index=self.ignore_index, reduction='sum')
        valid = (label != self.ignore_index).sum().clamp(min=1)
        return self.prior_loss_weight * ce / valid
