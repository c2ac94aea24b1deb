"""``model = dict(type='GuidedEncoderDecoder', ...)``: an EncoderDecoder whose neck sees the input image."""
from __future__ import annotations

import inspect

import torch
from mmseg.models.segmentors import EncoderDecoder
from mmseg.registry import MODELS


@MODELS.register_module()
class GuidedEncoderDecoder(EncoderDecoder):
    """mmseg's ``EncoderDecoder``, but ``extract_feat`` also passes the (preprocessed) input batch to a neck
    whose ``forward`` takes ``guidance``, such as ``FeatUpJBU``. Whole and slide inference both go through
    ``extract_feat``, so in slide mode each crop guides its own features; test-time augmentation calls the
    segmentor per augmented image and works unchanged.

    The data preprocessor's ``mean``/``std`` and channel order are handed to the neck so it can recover the
    RGB image (``set_data_normalization``).
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._neck_takes_guidance = self.with_neck and 'guidance' in inspect.signature(self.neck.forward).parameters
        if self._neck_takes_guidance and hasattr(self.neck, 'set_data_normalization'):
            dp = self.data_preprocessor
            mean, std = getattr(dp, 'mean', None), getattr(dp, 'std', None)
            if mean is not None and std is not None:
                # SegDataPreProcessor converts BGR->RGB *before* normalising when bgr_to_rgb=True, so the batch is
                # RGB then; without conversion it keeps the loaded (BGR, mmcv's default) order.
                bgr = not bool(getattr(dp, 'channel_conversion', False))
                self.neck.set_data_normalization(mean.flatten().tolist(), std.flatten().tolist(), bgr)

    def extract_feat(self, inputs: torch.Tensor):
        x = self.backbone(inputs)
        if self.with_neck:
            x = self.neck(x, guidance=inputs) if self._neck_takes_guidance else self.neck(x)
        return x
