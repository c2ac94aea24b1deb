"""A timm ResNet (torchvision's layout) as a feature extractor: the output of one stage as a ``[B, C, h, w]`` map
(torch + timm only). FeatUp's ``resnet50`` featurizer is ``layer4`` of torchvision's ResNet-50 (2048 channels,
stride 32); timm's ``resnet50`` has the same modules and keys, so torchvision state dicts load as they are.
"""

from __future__ import annotations

import os
from typing import Dict, Mapping, Optional, Union

import torch
import torch.nn as nn

from ..checkpoint.io import read_state_dict
from ..layers.freeze import FrozenPartsMixin

try:
    import timm
    from timm.models.resnet import ResNet
except ImportError:  # pragma: no cover - exercised only without timm
    timm = None

__all__ = ['TimmResNetFeatures']

_STAGES = ('layer1', 'layer2', 'layer3', 'layer4')


class TimmResNetFeatures(FrozenPartsMixin, nn.Module):
    """Stem, then ``layer1`` .. ``layer{stage}`` of a timm ``ResNet``: ``forward(x) -> [B, C, h, w]``.

    Args:
        model_name: a timm ResNet name (``'resnet50'``, ``'resnet18'``, ...; ``timm.list_models('resnet*')``).
        stage: the last stage kept, 1..4 (``layer4``: stride 32); later stages, pooling and ``fc`` are removed.
        pretrained: ``False`` (random init), ``True`` (timm's weights for the name, downloaded by timm), an
            ``http(s)://`` URL of a state dict (downloaded once into torch.hub's cache, e.g. torchvision's
            ``resnet50-19c8e357.pth`` that FeatUp loads) or a local checkpoint path (see :meth:`load_tensors`).
        frozen: eval mode (BatchNorm statistics fixed) and no gradients, kept across ``.train()``.
        model_kwargs: more ``timm.create_model`` arguments.

    Attributes: ``out_channels``, ``stride``, ``stage``, ``in_channels``, ``frozen``. State-dict keys:
    ``model.<timm/torchvision key>``.
    """

    def __init__(
        self,
        model_name: str = 'resnet50',
        stage: int = 4,
        pretrained: Union[bool, str] = False,
        frozen: bool = True,
        model_kwargs: Optional[dict] = None,
    ):
        super().__init__()
        who = type(self).__name__
        if timm is None:  # pragma: no cover
            raise ImportError(f'{who} needs timm: pip install timm')
        if not isinstance(model_name, str) or not timm.is_model(model_name):
            raise ValueError(f"{who}: timm has no model named {model_name!r} (see timm.list_models('resnet*'))")
        if not isinstance(stage, int) or isinstance(stage, bool) or not 1 <= stage <= 4:
            raise ValueError(f'{who}: stage must be 1, 2, 3 or 4 (layer1..layer4), got {stage!r}')
        if not isinstance(pretrained, (bool, str)):
            raise TypeError(f'{who}: pretrained must be a bool, a URL or a path, got {type(pretrained).__name__}')
        url = isinstance(pretrained, str) and pretrained.startswith(('http://', 'https://'))
        if isinstance(pretrained, str) and not url and not os.path.exists(pretrained):
            raise FileNotFoundError(f'{who}: pretrained checkpoint {pretrained!r} does not exist')
        model = timm.create_model(model_name, pretrained=pretrained is True, **dict(model_kwargs or {}))
        if not isinstance(model, ResNet):
            raise ValueError(f'{who}: {model_name!r} is a {type(model).__name__}, not a timm ResNet')
        self.model_name, self.stage, self.frozen = model_name, stage, bool(frozen)
        info = model.feature_info[stage]  # [act1, layer1, ..., layer4]
        self.out_channels, self.stride = int(info['num_chs']), int(info['reduction'])
        self.in_channels = int(model.conv1.in_channels)
        self.model = model
        if isinstance(pretrained, str):
            if url:
                tensors = torch.hub.load_state_dict_from_url(
                    pretrained, map_location='cpu', check_hash=True, weights_only=True
                )
                self.load_tensors(tensors, where=pretrained)
            else:
                self.load_tensors(read_state_dict(pretrained), where=pretrained)
        for name in _STAGES[stage:]:
            setattr(model, name, nn.Identity())
        model.reset_classifier(0, '')
        self.freeze_parts()

    def frozen_parts(self):
        return (self.model,) if self.frozen else ()

    def _own_keys(self, sd: Mapping[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
        sd = {k[len('module.') :] if k.startswith('module.') else k: v for k, v in sd.items()}
        if any(k.startswith('model.') for k in sd):
            sd = {k[len('model.') :]: v for k, v in sd.items() if k.startswith('model.')}
        dropped = ('fc.',) + tuple(f'{n}.' for n in _STAGES[self.stage :])
        return {'model.' + k: v for k, v in sd.items() if not k.startswith(dropped)}

    def load_tensors(self, tensors: Mapping[str, torch.Tensor], where: str = 'the state dict') -> None:
        """Load a ResNet state dict: torchvision's / timm's keys, this module's ``model.*``, either behind
        ``module.``; ``fc`` and the removed stages are ignored. Raises if a kept parameter or buffer is missing or
        an unknown key is left."""
        who = type(self).__name__
        sd = self._own_keys(tensors)
        own = self.state_dict()
        removed = ('model.fc.',) + tuple(f'model.{n}.' for n in _STAGES[self.stage :])
        kept = {k for k in own if not k.startswith(removed)}
        missing = sorted(kept - set(sd))
        unexpected = sorted(set(sd) - set(own))
        if missing or unexpected:
            raise RuntimeError(
                f'{who}: {where} does not fit {self.model_name} (up to layer{self.stage}): missing '
                f'{missing[:6]} ({len(missing)} in all), unexpected {unexpected[:6]} ({len(unexpected)} in all)'
            )
        self.load_state_dict({k: sd[k] for k in kept}, strict=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        who = type(self).__name__
        if not isinstance(x, torch.Tensor) or x.dim() != 4 or x.shape[1] != self.in_channels:
            shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise ValueError(f'{who} expects a [B, {self.in_channels}, H, W] image batch, got {shape}')
        m = self.model
        x = m.maxpool(m.act1(m.bn1(m.conv1(x))))
        for name in _STAGES[: self.stage]:
            x = getattr(m, name)(x)
        return x
