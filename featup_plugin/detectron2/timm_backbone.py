"""A timm model as a detectron2 :class:`Backbone`: plain ViTs through the project's
:class:`~featup_plugin.featurizers.TimmViTFeatures`, other models through ``timm.create_model(...,
features_only=True)``."""

from __future__ import annotations

import inspect
import math
import os
from typing import Dict, Optional, Sequence

import torch
from detectron2.layers import ShapeSpec
from detectron2.modeling import Backbone

from ..featurizers.timm_vit import TimmViTFeatures, is_plain_vit

__all__ = ['TimmBackbone']


class TimmBackbone(Backbone):
    """Any timm model with ``features_only`` support (CNNs, ViTs, ...) as a detectron2 backbone.

    Args:
        model_name: a timm model name, e.g. ``'vit_small_patch16_224'``, ``'resnet50'``, ``'convnext_tiny'``.
        out_indices: timm's ``out_indices`` (e.g. ``[-1]`` for the last ViT block, ``[1, 2, 3, 4]`` for the
            four ResNet stages).
        out_names: names of the outputs (default: timm's module names with ``.`` replaced by ``_``, e.g.
            ``blocks_11`` for a ViT-S block, ``layer4`` for a ResNet stage).
        pretrained: path of a local checkpoint for the full timm model (plain ViTs: read by
            :class:`~featup_plugin.featurizers.TimmViTFeatures`, which accepts the key formats of the mmseg
            ``TimmViT`` and resamples ``pos_embed``; other models: loaded by timm); empty or None: random
            initialisation. Nothing is downloaded.
        **model_kwargs: more ``timm.create_model`` arguments (e.g. ``depth=6``, ``img_size=512``).

    Plain ViTs (``VisionTransformer`` with a square patch embedding) return raw block outputs (no final norm, as
    ``features_only`` does) and are built with ``dynamic_img_size=True``; so are other ViT-style models.
    State-dict keys are ``model.model.<timm key>`` either way.
    ``size_divisibility`` is the least common multiple of the output strides (the patch size for a ViT), so
    every output map covers the padded image exactly. The input is what detectron2 feeds any backbone,
    ``(image - PIXEL_MEAN) / PIXEL_STD`` in ``INPUT.FORMAT``: for timm's pretrained weights use
    ``INPUT.FORMAT: RGB`` and the model's mean/std times 255 (ImageNet: ``[123.675, 116.28, 103.53]``,
    ``[58.395, 57.12, 57.375]``).
    """

    def __init__(
        self,
        model_name: str,
        out_indices: Sequence[int] = (-1,),
        out_names: Optional[Sequence[str]] = None,
        pretrained: Optional[str] = None,
        **model_kwargs,
    ):
        super().__init__()
        try:
            import timm
        except ImportError as e:  # pragma: no cover - timm is a dependency of the project
            raise ImportError('TimmBackbone needs timm: pip install timm') from e
        if not isinstance(model_name, str) or not timm.is_model(model_name):
            raise ValueError(f'TimmBackbone: {model_name!r} is not a timm model name (see timm.list_models())')
        if pretrained and not os.path.isfile(pretrained):
            raise FileNotFoundError(
                f'TimmBackbone: pretrained checkpoint {pretrained!r} does not exist (only local '
                'files are loaded; leave it empty for random initialisation)'
            )
        kwargs = dict(model_kwargs)
        self.model_name = model_name
        if is_plain_vit(model_name, kwargs):
            # the project's ViT extractor: raw block outputs (as timm's features_only gives them), weights read by
            # the project's reader (every key format TimmViT accepts); keys stay model.model.<timm key>
            self.model = TimmViTFeatures(
                model_name,
                out_indices=tuple(int(i) for i in out_indices),
                pretrained=pretrained or False,
                norm=False,
                model_kwargs=kwargs,
            )
            channels, strides = self.model.out_channels, self.model.strides
            modules = [f'blocks.{i}' for i in self.model.out_indices]
        else:
            if self._accepts_dynamic_size(timm, model_name, kwargs):
                kwargs.setdefault('dynamic_img_size', True)
            if pretrained:
                kwargs['pretrained_cfg_overlay'] = dict(file=os.path.abspath(pretrained))
            self.model = timm.create_model(
                model_name,
                features_only=True,
                out_indices=tuple(int(i) for i in out_indices),
                pretrained=bool(pretrained),
                **kwargs,
            )
            info = self.model.feature_info
            channels, strides, modules = info.channels(), info.reduction(), info.module_name()
        if out_names:
            names = [str(n) for n in out_names]
            if len(names) != len(channels):
                raise ValueError(
                    f'TimmBackbone: {len(names)} out_names {names} for {len(channels)} outputs '
                    f'(out_indices {list(out_indices)})'
                )
        else:
            names = [m.replace('.', '_') for m in modules]
        if len(set(names)) != len(names):
            raise ValueError(f'TimmBackbone: output names must be unique, got {names}')
        self._out_features = names
        self._out_feature_channels = {n: int(c) for n, c in zip(names, channels)}
        self._out_feature_strides = {n: int(s) for n, s in zip(names, strides)}
        self._size_divisibility = math.lcm(*self._out_feature_strides.values())

    @staticmethod
    def _accepts_dynamic_size(timm, model_name: str, kwargs: dict) -> bool:
        """Whether the model's class takes ``dynamic_img_size`` (ViT-style models), checked on the meta device."""
        if 'dynamic_img_size' in kwargs:
            return False
        try:
            with torch.device('meta'):
                probe = timm.create_model(model_name, pretrained=False, **kwargs)
        except Exception:  # noqa: BLE001 - fall back to building without the option
            return False
        return 'dynamic_img_size' in inspect.signature(type(probe).__init__).parameters

    @property
    def size_divisibility(self) -> int:
        return self._size_divisibility

    @property
    def padding_constraints(self) -> Dict[str, int]:
        return {'size_divisibility': self._size_divisibility}

    def output_shape(self) -> Dict[str, ShapeSpec]:
        return {
            n: ShapeSpec(channels=self._out_feature_channels[n], stride=self._out_feature_strides[n])
            for n in self._out_features
        }

    def forward(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:
        feats = self.model(x)
        if isinstance(feats, dict):
            feats = list(feats.values())
        return dict(zip(self._out_features, feats))
