"""mmengine models that train upsamplers (adapters over :mod:`featup_plugin.training`), and their hooks."""

from .hooks import EarlyGradClipHook
from .jbu_trainer import FeatUpJBUTrainer

__all__ = ['FeatUpJBUTrainer', 'EarlyGradClipHook']
