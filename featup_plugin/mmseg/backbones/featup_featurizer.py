"""``backbone=dict(type='FeatUpFeaturizerBackbone', name='dinov2', pretrained=True)``: one of FeatUp's six
featurizers (the backbones of its official JBU checkpoints) as an mmseg backbone, e.g. for the ``FeatUpJBU`` neck
with FeatUp's upsampler weights, or for ``FeatUpJBUTrainer`` to train an upsampler on exactly FeatUp's features::

    backbone=dict(type='FeatUpFeaturizerBackbone', name='dino16', pretrained=True),
    neck=dict(type='FeatUpJBU', in_channels=384, in_index=0, feature_strides=16, out_size='image',
              init_cfg=dict(type='Pretrained', checkpoint='dino16_jbu_stack_cocostuff.pth')),  # converted
"""

from __future__ import annotations

from typing import Optional, Tuple

import torch
from mmengine.model import BaseModule
from mmseg.registry import MODELS

from ...featurizers.featup import FeatUpFeaturizer


@MODELS.register_module()
class FeatUpFeaturizerBackbone(FeatUpFeaturizer, BaseModule):
    """The framework-free :class:`~featup_plugin.featurizers.FeatUpFeaturizer` registered in mmseg: returns a
    one-element tuple ``([B, dim, h, w],)`` (mmseg's backbone convention; ``in_index=0``), with ``out_channels``
    and ``strides`` lists for the neck / trainer.

    Args: ``name`` (``'vit'``, ``'dino16'``, ``'dinov2'``, ``'clip'``, ``'maskclip'``, ``'resnet50'``),
    ``pretrained`` (timm / torch.hub download), ``weights`` (a local backbone file), ``use_norm`` (FeatUp's
    ChannelNorm; default False here, since the ``FeatUpJBU`` neck and the trainer apply their own), ``frozen``
    (default True: FeatUp's featurizers are frozen), ``trust``, ``model_kwargs`` (e.g. a small ``depth`` for
    tests) and mmengine's ``init_cfg``. Input: ImageNet-normalised RGB, as ``GuidedEncoderDecoder`` / the data
    preprocessor with ImageNet statistics give it.
    """

    def __init__(
        self,
        name: str = 'dino16',
        pretrained: bool = False,
        weights: Optional[str] = None,
        use_norm: bool = False,
        frozen: bool = True,
        trust: bool = False,
        model_kwargs: Optional[dict] = None,
        init_cfg=None,
    ):
        super().__init__(
            name,
            pretrained=pretrained,
            weights=weights,
            use_norm=use_norm,
            frozen=frozen,
            trust=trust,
            model_kwargs=model_kwargs,
            init_cfg=init_cfg,
        )
        self.out_channels = [self.dim]
        self.strides = [self.stride]
        # mmengine's init_weights re-initialises children that have init_weights (timm's models do) unless marked
        self.backbone.model.is_init = True

    def forward(self, img: torch.Tensor) -> Tuple[torch.Tensor]:
        return (super().forward(img),)
