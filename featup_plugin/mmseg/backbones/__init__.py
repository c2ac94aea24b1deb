"""mmseg backbones (``MODELS``). ``Detectron2Backbone`` imports detectron2 only when built (the one bridge
between the two adapters)."""

from .detectron2_backbone import Detectron2Backbone
from .featup_featurizer import FeatUpFeaturizerBackbone
from .timm_vit import TimmViT

__all__ = ['TimmViT', 'FeatUpFeaturizerBackbone', 'Detectron2Backbone']
