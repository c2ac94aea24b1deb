"""Freezing parts of a model: eval mode and no gradients, kept across ``.train()``."""

from __future__ import annotations

from typing import Iterable

import torch.nn as nn

__all__ = ['freeze', 'FrozenPartsMixin']


def freeze(*modules: nn.Module) -> None:
    """Eval mode and ``requires_grad=False`` for every parameter of ``modules``."""
    for module in modules:
        module.eval()
        for p in module.parameters():
            p.requires_grad = False


class FrozenPartsMixin:
    """For ``nn.Module`` subclasses (listed before the module base): :meth:`frozen_parts` names the submodules
    that stay frozen; :meth:`freeze_parts` freezes them and ``train()`` re-applies it after switching modes."""

    def frozen_parts(self) -> Iterable[nn.Module]:
        return ()

    def freeze_parts(self) -> None:
        freeze(*self.frozen_parts())

    def train(self, mode: bool = True):
        super().train(mode)
        self.freeze_parts()
        return self
