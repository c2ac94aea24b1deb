"""``neck=dict(type='FeatUpJBU', ...)``: FeatUp's JBU stack as an MMSegmentation neck."""

from __future__ import annotations

import os
from typing import List, Optional, Sequence, Union

import torch
import torch.nn as nn
from mmengine.logging import print_log
from mmengine.model import BaseModule
from mmseg.registry import MODELS

from ...checkpoint import load_stacks  # shared with detectron2's FeatUpBackbone
from ...layers.freeze import FrozenPartsMixin
from ...upsamplers import ChannelNorm, JBUStack
from ...upsamplers.target import check_target, derive_num_stages, target_size
from ..guided import GuidedModuleMixin, missing_guidance_message
from ._levels import assemble, level_input, parse_levels
from ._proj import build_projections, resolve_out_channels

MISSING_GUIDANCE = missing_guidance_message('FeatUpJBU', 'neck')


@MODELS.register_module()
class FeatUpJBU(GuidedModuleMixin, FrozenPartsMixin, BaseModule):
    """Upsamples backbone feature map(s) with FeatUp's JBU stack, guided by the input image.

    Args:
        in_channels: channels of the backbone outputs (an int, or a list matching the backbone's tuple).
        in_index: which backbone output(s) to upsample (int or list). Other levels pass through unchanged.
        out_channels: width of each upsampled level after a 1×1 projection (``ConvModule`` with ``conv_cfg`` /
            ``norm_cfg`` / ``act_cfg``, default: plain 1×1 conv with bias) applied at the output resolution,
            after the JBU stack (whose weights are tied to the backbone width); an int for all upsampled levels
            or a list, one per entry of ``in_index``. None (default): no projection, the level keeps the
            backbone's width. The projections are trainable even with ``freeze_upsampler`` and are not part of
            the upsampler weights that ``init_cfg`` loads.
        out_size: target of the upsampled level(s): ``'image'`` (the input/crop size, default), or None to
            use ``scale_factor`` / ``output_stride``.
        scale_factor: upsampling factor relative to the feature map (e.g. 4, 16).
        output_stride: target stride relative to the image (e.g. 4 -> image size / 4).
        feature_strides: strides of the backbone outputs (list like ``in_channels``, or one int for the chosen
            level(s)), e.g. ``[4, 8, 16, 32]`` for ResNet, 16 for ViT-S/16. Used to build exactly the ×2 stages
            needed: unused stages would hold parameters that never get gradients (and stop DDP).
        num_stages: ×2 JBU stages per upsampled level, overriding the derivation (default: from
            ``scale_factor``, else from ``feature_strides`` and the target, else 4 as in FeatUp). See
            ``featup_plugin.upsamplers.plan_stage_sizes`` for how stages are used.
        radius, key_dim: JBU window radius and range-key width (FeatUp: 3, 32).
        channel_norm: LayerNorm over channels before upsampling (FeatUp does this on backbone features).
        freeze_upsampler: keep the upsampler (and the channel norm) in eval mode without gradients.
        mode: ``'replace'`` returns the input tuple with each chosen level replaced by its upsampled version;
            ``'append'`` appends the upsampled maps after the inputs.
        data_mean, data_std, data_bgr: the data preprocessor's normalisation, filled in by
            ``GuidedEncoderDecoder``. The neck undoes it and feeds the range MLP ImageNet-normalised RGB,
            which is what FeatUp's trained upsamplers expect.
        init_cfg: ``dict(type='Pretrained', checkpoint='jbu.pth')`` loads upsampler weights (see
            ``load_upsampler_weights`` for the accepted files). Unlike mmengine's generic loader, a file that
            lacks some upsampler weight or has a wrong shape is an error, not a silent partial load.
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
        radius: int = 3,
        key_dim: int = 32,
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
        self.mode = mode
        self.freeze_upsampler = freeze_upsampler
        self.num_stages = (
            [num_stages] * len(self.in_index) if num_stages else self._derive_stages(chans, feature_strides)
        )
        self.upsamplers = nn.ModuleList(
            JBUStack(c, num_stages=n, radius=radius, key_dim=key_dim) for c, n in zip(self.channels, self.num_stages)
        )
        self.norms = nn.ModuleList(ChannelNorm(c) if channel_norm else nn.Identity() for c in self.channels)
        self.out_channels = resolve_out_channels(out_channels, self.channels, 'FeatUpJBU')
        self.projs = build_projections(self.channels, self.out_channels, conv_cfg, norm_cfg, act_cfg)
        self.freeze_parts()

    def _derive_stages(self, chans, feature_strides) -> List[int]:
        return derive_num_stages(self.in_index, chans, feature_strides, self.scale_factor, self.output_stride)

    # -- weights ------------------------------------------------------------------------------------------
    def init_weights(self) -> None:
        cfg = self.init_cfg
        if isinstance(cfg, dict) and cfg.get('type') == 'Pretrained':
            self.load_upsampler_weights(cfg['checkpoint'], prefix=cfg.get('prefix'))
            self._is_init = True
            return
        super().init_weights()

    def load_upsampler_weights(self, checkpoint, prefix: Optional[str] = None) -> None:
        """Load the upsampler (and channel-norm) weights from ``checkpoint`` (a path or URL, or a state dict)
        with :func:`featup_plugin.checkpoint.load_stacks`.

        Accepted: this neck's own keys (``upsamplers.<i>.*``, ``norms.<i>.*``), a segmentor checkpoint
        (``neck.upsamplers.<i>.*``), or, for a neck with one upsampled level, a bare ``JBUStack`` state dict
        (``up1.*``, ``fixup_proj.*``: what ``tools/model_converters/convert_featup_checkpoint.py`` writes without
        ``--prefix``),
        or one under ``upsampler.*``: a checkpoint of the upsampler training (``FeatUpJBUTrainer``, whose
        ``backbone.*``, ``downsampler.*``, ``scale_net.*`` are ignored) or an official FeatUp one.
        ``prefix`` first selects and strips keys that start with it. Channel-norm weights are optional (FeatUp
        never trains them); every upsampler weight must be present with the right shape. Stages the file has
        beyond those the neck builds (e.g. FeatUp's x16 stack used to stride 4) are left out, with a log line.
        A missing or mis-shaped weight raises ``UpsamplerMismatchError`` (a ``KeyError`` and ``ValueError``);
        a file that is not a checkpoint raises ``NotACheckpointError`` naming it.
        """
        if isinstance(checkpoint, str) and '://' in checkpoint and not os.path.exists(checkpoint):
            # URLs, openmmlab://, s3://...: mmengine's loaders fetch the file
            from mmengine.runner.checkpoint import CheckpointLoader

            where = checkpoint
            checkpoint = CheckpointLoader.load_checkpoint(checkpoint, map_location='cpu')
        else:
            where = None
        load_stacks(
            {str(i): up for i, up in enumerate(self.upsamplers)},
            checkpoint,
            prefix or '',
            norms={str(i): n for i, n in enumerate(self.norms)},
            who='FeatUpJBU',
            where=where,
            log=lambda msg: print_log(msg, logger='current'),
        )

    # -- forward ------------------------------------------------------------------------------------------
    def forward(self, inputs: Sequence[torch.Tensor], guidance: Optional[torch.Tensor] = None) -> tuple:
        if guidance is None:
            raise RuntimeError(MISSING_GUIDANCE)
        inputs = list(inputs)
        image = self.guidance_from_inputs(guidance)
        outs: List[torch.Tensor] = []
        for idx, c, norm, up in zip(self.in_index, self.channels, self.norms, self.upsamplers):
            feat = level_input(inputs, idx, c, 'FeatUpJBU')
            if image.shape[0] != feat.shape[0]:
                raise ValueError('FeatUpJBU: guidance and features have different batch sizes')
            size = target_size(feat.shape[-2:], image.shape[-2:], self.out_size, self.scale_factor, self.output_stride)
            outs.append(up(norm(feat), image.to(feat.dtype), output_size=size))
        return assemble(inputs, outs, self.in_index, self.projs, self.mode)

    # -- freezing -----------------------------------------------------------------------------------------
    def frozen_parts(self):
        return (self.upsamplers, self.norms) if self.freeze_upsampler else ()
