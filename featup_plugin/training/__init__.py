"""Framework-free pieces of FeatUp's training: jitter views, losses (torch only).

The mmengine model that trains a JBU stack with them is :mod:`featup_plugin.mmseg.trainers.jbu_trainer`; the implicit
per-image upsampler is :mod:`featup_plugin.training.implicit`.

Derivation / details: docs/training.md
"""

from .jitter import JitterParams, apply_jitter, reflect_pad, sample_jitter
from .losses import (
    UncertaintyHead,
    blur_loss,
    magnitude_tv_loss,
    project,
    random_projection,
    total_variation,
    uncertainty_loss,
)
from .multiview import multiview_loss

__all__ = [
    'JitterParams',
    'apply_jitter',
    'reflect_pad',
    'sample_jitter',
    'UncertaintyHead',
    'uncertainty_loss',
    'random_projection',
    'project',
    'total_variation',
    'magnitude_tv_loss',
    'blur_loss',
    'multiview_loss',
]
