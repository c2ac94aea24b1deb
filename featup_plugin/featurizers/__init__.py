"""Frozen feature extractors (torch + timm): what the upsamplers are trained on and evaluated with."""
from .timm_featurizer import TimmFeaturizer, parse_model_kwargs

__all__ = ['TimmFeaturizer', 'parse_model_kwargs']
