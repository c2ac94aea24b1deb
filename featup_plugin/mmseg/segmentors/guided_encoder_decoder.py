"""``model = dict(type='GuidedEncoderDecoder', ...)``: an EncoderDecoder whose neck and heads see the input image.

Details (the guidance hand-over): docs/jbu.md#guidance-hand-over-in-mmseg-guidedencoderdecoder
"""

from __future__ import annotations

import inspect

import torch
import torch.nn as nn
from mmseg.models.segmentors import EncoderDecoder
from mmseg.registry import MODELS


def _takes_guidance(module) -> bool:
    return module is not None and 'guidance' in inspect.signature(module.forward).parameters


class GuidedFeatures(tuple):
    """The feature tuple that ``GuidedEncoderDecoder.extract_feat`` returns when a head is guided: a plain tuple
    of feature maps (heads index it as usual) that also carries the preprocessed input batch as ``.guidance``.
    Guided heads (``forward(inputs, guidance=None)``, e.g. ``SFTGuidedHead``) read it from there, so the image
    reaches them through mmseg's own ``loss`` / ``predict`` / ``_forward`` calls, per crop in slide inference."""

    def __new__(cls, feats, guidance: torch.Tensor):
        obj = super().__new__(cls, feats)
        obj.guidance = guidance
        return obj


@MODELS.register_module()
class GuidedEncoderDecoder(EncoderDecoder):
    """mmseg's ``EncoderDecoder``, but ``extract_feat`` also hands the (preprocessed) input batch to a neck
    whose ``forward`` takes ``guidance``, such as ``FeatUpJBU``, and to decode / auxiliary heads whose
    ``forward`` takes ``guidance``, such as ``SFTGuidedHead`` (the features then arrive as a
    :class:`GuidedFeatures` tuple carrying the batch). In slide inference each crop guides its own features;
    test-time augmentation works unchanged. The data preprocessor's ``mean``/``std`` and channel order are handed
    to each guided module that has ``set_data_normalization``, so it can recover the RGB image.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._neck_takes_guidance = self.with_neck and _takes_guidance(self.neck)
        heads = [self.decode_head]
        if self.with_auxiliary_head:
            aux = self.auxiliary_head
            heads += list(aux) if isinstance(aux, nn.ModuleList) else [aux]
        guided_heads = [h for h in heads if _takes_guidance(h)]
        self._heads_take_guidance = bool(guided_heads)
        guided = ([self.neck] if self._neck_takes_guidance else []) + guided_heads
        dp = self.data_preprocessor
        mean, std = getattr(dp, 'mean', None), getattr(dp, 'std', None)
        if mean is not None and std is not None:
            # SegDataPreProcessor converts BGR->RGB *before* normalising when bgr_to_rgb=True, so the batch is
            # RGB then; without conversion it keeps the loaded (BGR, mmcv's default) order.
            bgr = not bool(getattr(dp, 'channel_conversion', False))
            for module in guided:
                if hasattr(module, 'set_data_normalization'):
                    module.set_data_normalization(mean.flatten().tolist(), std.flatten().tolist(), bgr)

    def extract_feat(self, inputs: torch.Tensor):
        x = self.backbone(inputs)
        if self.with_neck:
            x = self.neck(x, guidance=inputs) if self._neck_takes_guidance else self.neck(x)
        if self._heads_take_guidance:
            if not isinstance(x, (list, tuple)):
                raise TypeError(
                    f'GuidedEncoderDecoder: the backbone/neck must return a list or tuple of feature '
                    f'maps for a guided head, got {type(x).__name__}'
                )
            x = GuidedFeatures(x, guidance=inputs)
        return x
