"""Frozen feature extractors (torch + timm): what the upsamplers are trained on and evaluated with, including
FeatUp's six featurizers (:class:`FeatUpFeaturizer`, the backbones of its official checkpoints)."""

from .featup import (
    FEATUP_FEATURIZERS,
    FeatUpFeaturizer,
    FeaturizerSpec,
    WeightsDownloadError,
    featurizer_spec,
    list_featurizers,
)
from .resnet import TimmResNetFeatures
from .timm_featurizer import TimmFeaturizer, parse_model_kwargs
from .timm_vit import POS_EMBED_INTERP, TimmViTFeatures, is_plain_vit, resample_pos_embed

__all__ = [
    'TimmViTFeatures',
    'TimmFeaturizer',
    'TimmResNetFeatures',
    'FeatUpFeaturizer',
    'FeaturizerSpec',
    'FEATUP_FEATURIZERS',
    'POS_EMBED_INTERP',
    'WeightsDownloadError',
    'featurizer_spec',
    'list_featurizers',
    'is_plain_vit',
    'parse_model_kwargs',
    'resample_pos_embed',
]
