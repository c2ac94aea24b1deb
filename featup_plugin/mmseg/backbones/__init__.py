"""mmseg backbones (registered when this package is imported, i.e. when mmseg is importable).

``Detectron2Backbone`` is registered always but imports detectron2 only when built."""

from .detectron2_backbone import Detectron2Backbone
from .timm_vit import TimmViT

__all__ = ['TimmViT', 'Detectron2Backbone']
