"""Frozen feature extractors (torch + timm): what the upsamplers are trained on and evaluated with."""

from .timm_featurizer import TimmFeaturizer, parse_model_kwargs
from .timm_vit import TimmViTFeatures, is_plain_vit

__all__ = ['TimmViTFeatures', 'TimmFeaturizer', 'is_plain_vit', 'parse_model_kwargs']
