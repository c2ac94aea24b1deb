"""Framework-free pieces of FeatUp's training: jitter views, losses (torch only).

The mmengine model that trains a JBU stack with them is :mod:`featup_plugin.mmseg.trainers.jbu_trainer`; the implicit
per-image upsampler is :mod:`featup_plugin.training.implicit`.

Derivation / details: docs/training.md
"""

from .jitter import JitterParams, apply_jitter, reflect_pad, sample_jitter
from .losses import (
    UncertaintyHead,
    blur_loss,
    filter_entropy,
    magnitude,
    magnitude_loss,
    magnitude_tv_loss,
    project,
    random_projection,
    sampled_crf_loss,
    total_variation,
    uncertainty_loss,
)
from .multiview import CLIP_GRAD_NORM, CLIP_GRAD_STEPS, clip_early_gradients, multiview_loss

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
    'magnitude',
    'magnitude_loss',
    'magnitude_tv_loss',
    'blur_loss',
    'sampled_crf_loss',
    'filter_entropy',
    'multiview_loss',
    'clip_early_gradients',
    'CLIP_GRAD_NORM',
    'CLIP_GRAD_STEPS',
]
