"""mmengine models that train upsamplers (adapters over :mod:`featup_plugin.training`)."""

from .jbu_trainer import FeatUpJBUTrainer

__all__ = ['FeatUpJBUTrainer']
