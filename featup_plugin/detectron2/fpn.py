"""FPN on top of :class:`FeatUpBackbone`, for detectors (Faster/Mask R-CNN, RetinaNet, Panoptic FPN)."""

from __future__ import annotations

import math
from typing import Dict

from detectron2.layers import ShapeSpec
from detectron2.modeling import BACKBONE_REGISTRY
from detectron2.modeling.backbone.fpn import FPN, LastLevelMaxPool

from .backbone import FeatUpBackbone

__all__ = ['FeatUpFPN', 'build_featup_fpn_backbone']


class FeatUpFPN(FPN):
    """detectron2's :class:`FPN` whose ``size_divisibility`` also honours the bottom-up backbone's (FPN alone
    asks for its coarsest input stride only), and whose ``padding_constraints`` carry it."""

    @property
    def size_divisibility(self) -> int:
        return math.lcm(int(self._size_divisibility), int(self.bottom_up.size_divisibility or 1))

    @property
    def padding_constraints(self) -> Dict[str, int]:
        return dict(super().padding_constraints, size_divisibility=self.size_divisibility)


def _fpn(cfg, bottom_up: FeatUpBackbone, top_block) -> FeatUpFPN:
    shapes = bottom_up.output_shape()
    missing = [f for f in cfg.MODEL.FPN.IN_FEATURES if f not in shapes]
    if missing:
        raise ValueError(
            f'MODEL.FPN.IN_FEATURES {list(cfg.MODEL.FPN.IN_FEATURES)}: {missing} are not outputs of the '
            f'FeatUp backbone ({ {k: v.stride for k, v in shapes.items()} }). With MODEL.FEATUP.MODE '
            'append, the upsampled map is "featup" (e.g. IN_FEATURES ["featup", "res3", "res4", "res5"] '
            'for OUTPUT_STRIDE 4)'
        )
    return FeatUpFPN(
        bottom_up=bottom_up,
        in_features=cfg.MODEL.FPN.IN_FEATURES,
        out_channels=cfg.MODEL.FPN.OUT_CHANNELS,
        norm=cfg.MODEL.FPN.NORM,
        top_block=top_block,
        fuse_type=cfg.MODEL.FPN.FUSE_TYPE,
    )


@BACKBONE_REGISTRY.register()
def build_featup_fpn_backbone(cfg, input_shape: ShapeSpec) -> FeatUpFPN:
    """``MODEL.BACKBONE.NAME: build_featup_fpn_backbone``: FPN (with a max-pool P6, as
    ``build_resnet_fpn_backbone``) over :class:`FeatUpBackbone` built from ``MODEL.FEATUP``.

    FPN needs inputs whose strides double from one to the next (``MODEL.FPN.IN_FEATURES``, fine to coarse). A
    typical choice: ``MODEL.FEATUP.MODE append`` with ``IN_FEATURES [res5]`` and ``OUTPUT_STRIDE 4`` adds
    ``featup`` (res5's semantics at stride 4), and ``MODEL.FPN.IN_FEATURES [featup, res3, res4, res5]``.
    """
    return _fpn(cfg, FeatUpBackbone(cfg, input_shape), LastLevelMaxPool())
