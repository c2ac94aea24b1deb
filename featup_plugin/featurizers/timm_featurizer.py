"""A frozen timm ViT as a plain feature extractor for the tools (torch + timm; no framework): a
:class:`~featup_plugin.featurizers.timm_vit.TimmViTFeatures`.

``TimmFeaturizer('vit_small_patch16_224', depth=4)`` returns ChannelNorm'ed patch tokens of the last block (after
the ViT's final norm, as FeatUp's featurizers) as ``[B, C, ceil(H/p), ceil(W/p)]``. Weights: random init (no
download) unless ``pretrained=True`` (timm's hub, needs the network) or ``weights='file.pth'`` (a timm state dict,
or a checkpoint of the upsampler training / an mmseg segmentor whose ViT is under ``backbone.model.``).
"""

from __future__ import annotations

import ast
from typing import Optional

import torch
import torch.nn as nn

from ..upsamplers.layers import ChannelNorm
from .timm_vit import TimmViTFeatures

__all__ = ['TimmFeaturizer', 'parse_model_kwargs']


def parse_model_kwargs(items) -> dict:
    """``['depth=4', 'img_size=112']`` (the tools' ``--model-kwargs``) -> keyword arguments for timm; values are
    read as Python literals where they parse, else kept as strings."""
    out = {}
    for item in items or []:
        if '=' not in item:
            raise ValueError(f'--model-kwargs expects key=value, got {item!r}')
        k, v = item.split('=', 1)
        try:
            out[k] = ast.literal_eval(v)
        except (ValueError, SyntaxError):
            out[k] = v
    return out


class TimmFeaturizer(TimmViTFeatures):
    """A frozen :class:`TimmViTFeatures` giving the last block's tokens after the ViT's final norm, ChannelNorm'ed
    (``channel_norm``) as FeatUp's featurizers. State-dict keys: ``model.<timm key>`` and ``norm.*``.

    ``weights``: a local checkpoint in any format :class:`TimmViTFeatures` reads (a timm state dict, this
    module's, or a checkpoint of the upsampler training / an mmseg segmentor whose ViT is under
    ``backbone.model.``); ``model_kwargs`` go to ``timm.create_model``.
    """

    def __init__(
        self,
        model_name: str = 'vit_small_patch16_224',
        pretrained: bool = False,
        weights: Optional[str] = None,
        channel_norm: bool = True,
        **model_kwargs,
    ):
        super().__init__(
            model_name, out_indices=-1, pretrained=bool(pretrained), norm=True, frozen=True, model_kwargs=model_kwargs
        )
        if weights:
            self.load_weights(weights)
        self.feat_dim = self.embed_dim
        self.norm = ChannelNorm(self.feat_dim) if channel_norm else nn.Identity()
        self.freeze_parts()

    def load_weights(self, path: str) -> None:
        """Load the ViT's weights from a local checkpoint (see the class docstring)."""
        self.load_checkpoint(path)

    def frozen_parts(self):
        norm = getattr(self, 'norm', None)  # None while the base class is being built
        return (self.model,) if norm is None else (self.model, norm)  # always frozen

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(super().forward(x)[0])
