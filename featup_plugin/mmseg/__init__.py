"""The MMSegmentation 1.x adapter: every module of featup_plugin that imports mmseg, mmengine or mmcv.

``import featup_plugin.mmseg`` registers all of them in mmseg's registries. A config needs only
``custom_imports = dict(imports=['featup_plugin'])``: ``import featup_plugin`` registers this adapter as soon as
mmseg is (or gets) imported.
"""

from . import backbones, datasets, evaluation, heads, necks, segmentors, trainers
from .backbones import Detectron2Backbone, TimmViT
from .datasets import FeatUpSyntheticDataset, ImageFolderDataset
from .evaluation import BoundaryFScore, GroupIoUMetric
from .heads import LinearProbeHead, PacCRFHead, SFTGuidedHead
from .necks import FeatUpJBU, PacJointUpsamplerNeck, ResizeNeck
from .segmentors import GuidedEncoderDecoder, GuidedFeatures, build_pac_hot_swap
from .trainers import FeatUpJBUTrainer

__all__ = [
    'backbones',
    'datasets',
    'evaluation',
    'heads',
    'necks',
    'segmentors',
    'trainers',
    'TimmViT',
    'Detectron2Backbone',
    'FeatUpSyntheticDataset',
    'ImageFolderDataset',
    'BoundaryFScore',
    'GroupIoUMetric',
    'LinearProbeHead',
    'SFTGuidedHead',
    'PacCRFHead',
    'FeatUpJBU',
    'ResizeNeck',
    'PacJointUpsamplerNeck',
    'GuidedEncoderDecoder',
    'GuidedFeatures',
    'build_pac_hot_swap',
    'FeatUpJBUTrainer',
]
