"""FeatUp's featurizers as a detectron2 :class:`Backbone` (``MODEL.BACKBONE.NAME`` or ``MODEL.FEATUP.BASE_BACKBONE``:
``build_featup_featurizer_backbone``; ``MODEL.FEATUP.FEATURIZER.NAME``: ``vit``, ``dino16``, ``dinov2``, ``clip``,
``maskclip`` or ``resnet50``), so ``FeatUpBackbone`` can upsample exactly the features FeatUp's official
upsamplers were trained on."""

from __future__ import annotations

from typing import Dict, Optional, Sequence

import torch
from detectron2.layers import ShapeSpec
from detectron2.modeling import BACKBONE_REGISTRY, Backbone

from ..featurizers.featup import FeatUpFeaturizer
from ..upsamplers.guidance import imagenet_guidance

__all__ = ['FeaturizerBackbone', 'build_featup_featurizer_backbone']


class FeaturizerBackbone(Backbone):
    """A :class:`~featup_plugin.featurizers.FeatUpFeaturizer` (frozen) behind detectron2's input convention.

    ``forward(x)`` takes what detectron2 feeds a backbone, ``(image - pixel_mean) / pixel_std`` (0-255 scale) in
    ``input_format`` channel order, turns it into the ImageNet-normalised RGB FeatUp's featurizers take and
    returns ``{out_name: [B, dim, ceil(H / stride), ceil(W / stride)]}``. ``out_name`` defaults to the featurizer's
    name. ``size_divisibility`` is the featurizer's stride (patch 14 for dinov2, 32 for resnet50).
    """

    def __init__(
        self,
        name: str,
        pretrained: bool = False,
        weights: Optional[str] = None,
        pixel_mean: Sequence[float] = (103.530, 116.280, 123.675),
        pixel_std: Sequence[float] = (1.0, 1.0, 1.0),
        input_format: str = 'BGR',
        out_name: Optional[str] = None,
        model_kwargs: Optional[dict] = None,
    ):
        super().__init__()
        self.featurizer = FeatUpFeaturizer(name, pretrained=pretrained, weights=weights, model_kwargs=model_kwargs)
        self.pixel_mean = tuple(float(v) for v in pixel_mean)
        self.pixel_std = tuple(float(v) for v in pixel_std)
        self.input_format = str(input_format).upper()
        probe = torch.zeros(1, 1 if self.input_format == 'L' else 3, 1, 1)
        imagenet_guidance(probe, self.pixel_mean, self.pixel_std, self.input_format, who='FeaturizerBackbone')
        self.out_name = out_name or self.featurizer.name
        self._out_features = [self.out_name]

    @property
    def size_divisibility(self) -> int:
        return self.featurizer.stride

    def output_shape(self) -> Dict[str, ShapeSpec]:
        return {self.out_name: ShapeSpec(channels=self.featurizer.dim, stride=self.featurizer.stride)}

    def forward(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:
        rgb = imagenet_guidance(x, self.pixel_mean, self.pixel_std, self.input_format, who='FeaturizerBackbone')
        return {self.out_name: self.featurizer(rgb)}


@BACKBONE_REGISTRY.register()
def build_featup_featurizer_backbone(cfg, input_shape: Optional[ShapeSpec] = None) -> FeaturizerBackbone:
    """``MODEL.FEATUP.FEATURIZER.{NAME, PRETRAINED, WEIGHTS, OUT_NAME}`` with the cfg's ``MODEL.PIXEL_MEAN/STD``
    and ``INPUT.FORMAT``."""
    if 'FEATUP' not in cfg.MODEL:
        raise KeyError('the config has no MODEL.FEATUP: call featup_plugin.detectron2.add_featup_config(cfg) first')
    f = cfg.MODEL.FEATUP.FEATURIZER
    if not f.NAME:
        raise ValueError(
            'build_featup_featurizer_backbone needs MODEL.FEATUP.FEATURIZER.NAME: one of vit, dino16, dinov2, clip, '
            'maskclip, resnet50'
        )
    return FeaturizerBackbone(
        f.NAME,
        pretrained=bool(f.PRETRAINED),
        weights=f.WEIGHTS or None,
        pixel_mean=cfg.MODEL.PIXEL_MEAN,
        pixel_std=cfg.MODEL.PIXEL_STD,
        input_format=cfg.INPUT.FORMAT,
        out_name=f.OUT_NAME or None,
    )
