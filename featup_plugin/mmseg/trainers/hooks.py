"""``custom_hooks=[dict(type='EarlyGradClipHook')]``: FeatUp's gradient clipping of the first training steps (the
JBU training clips the total gradient norm to 1e-4 for its first 10 optimiser steps), through the optimiser
wrapper's own clipping, so AMP (unscale first) and DDP (the averaged gradient) work as usual.

Derivation / details: docs/training.md#featupjbutrainer
"""

from __future__ import annotations

import math

import torch
from mmengine.hooks import Hook
from mmseg.registry import HOOKS

from ...training.multiview import CLIP_GRAD_NORM, CLIP_GRAD_STEPS

_UNSET = object()
_ATTRS = ('clip_grad_kwargs', 'clip_func', 'grad_name')


@HOOKS.register_module()
class EarlyGradClipHook(Hook):
    """Clip the total gradient norm to ``max_norm`` in training iterations ``0 .. steps - 1`` (FeatUp: 1e-4, 10;
    with gradient accumulation: those iterations, i.e. ``steps`` backward passes). Later iterations use the
    optimiser wrapper's own ``clip_grad`` setting (none by default); a resumed run past ``steps`` is unaffected."""

    priority = 'NORMAL'

    def __init__(self, max_norm: float = CLIP_GRAD_NORM, steps: int = CLIP_GRAD_STEPS):
        if not (isinstance(max_norm, (int, float)) and math.isfinite(max_norm) and max_norm > 0):
            raise ValueError(f'EarlyGradClipHook max_norm must be a finite number > 0, got {max_norm!r}')
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
            raise ValueError(f'EarlyGradClipHook steps must be an int >= 0, got {steps!r}')
        self.max_norm, self.steps = float(max_norm), steps
        self._saved = {}

    @staticmethod
    def _wrappers(runner):
        wrapper = runner.optim_wrapper
        inner = getattr(wrapper, '_optim_wrappers', None)  # OptimWrapperDict: every wrapper
        return list(inner.values()) if isinstance(inner, dict) else [wrapper]

    def before_train_iter(self, runner, batch_idx: int, data_batch=None) -> None:
        if runner.iter >= self.steps:
            return self._restore(runner)
        for wrapper in self._wrappers(runner):
            if id(wrapper) not in self._saved:
                self._saved[id(wrapper)] = tuple(getattr(wrapper, a, _UNSET) for a in _ATTRS)
            wrapper.clip_grad_kwargs = dict(max_norm=self.max_norm, norm_type=2)
            wrapper.clip_func = torch.nn.utils.clip_grad_norm_
            wrapper.grad_name = 'grad_norm'

    def after_train(self, runner) -> None:
        self._restore(runner)

    def _restore(self, runner) -> None:
        """The wrapper's own clipping settings back; without its own clipping, the last clipped step's
        ``grad_norm`` leaves the logs (it would be logged, stale, at every later iteration)."""
        for wrapper in self._wrappers(runner):
            saved = self._saved.pop(id(wrapper), None)
            if saved is None:
                continue
            for attr, value in zip(_ATTRS, saved):
                if value is _UNSET:
                    delattr(wrapper, attr)
                else:
                    setattr(wrapper, attr, value)
            if not getattr(wrapper, 'clip_grad_kwargs', None) and hasattr(wrapper, 'message_hub'):
                wrapper.message_hub.log_scalars.pop('train/grad_norm', None)
