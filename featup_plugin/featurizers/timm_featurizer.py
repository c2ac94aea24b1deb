"""A frozen timm ViT as a plain feature extractor for the tools (torch + timm; no framework).

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


class TimmFeaturizer(nn.Module):
    def __init__(self, model_name: str = 'vit_small_patch16_224', pretrained: bool = False,
                 weights: Optional[str] = None, channel_norm: bool = True, **model_kwargs):
        super().__init__()
        import timm
        if not timm.is_model(model_name):
            raise ValueError(f'timm has no model {model_name!r}; e.g. vit_small_patch16_224, vit_small_patch8_224')
        kwargs = dict(num_classes=0, dynamic_img_size=True, dynamic_img_pad=True)
        kwargs.update(model_kwargs)
        self.model = timm.create_model(model_name, pretrained=pretrained, **kwargs)
        if not hasattr(self.model, 'forward_intermediates') or not hasattr(self.model, 'patch_embed'):
            raise ValueError(f'{model_name} is not a timm VisionTransformer')
        self.patch_size = int(self.model.patch_embed.patch_size[0])
        self.feat_dim = int(self.model.embed_dim)
        if weights:
            self.load_weights(weights)
        self.norm = ChannelNorm(self.feat_dim) if channel_norm else nn.Identity()
        self.eval()
        for p in self.parameters():
            p.requires_grad = False

    def load_weights(self, path: str) -> None:
        from ..checkpoint import load_mmengine_checkpoint
        sd = load_mmengine_checkpoint(path, map_location='cpu')
        sd = sd.get('state_dict', sd.get('model', sd)) if isinstance(sd, dict) else sd
        for prefix in ('backbone.model.', 'model.'):
            if any(k.startswith(prefix) for k in sd):
                sd = {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}
                break
        own = self.model.state_dict()
        missing = [k for k in own if k not in sd and not k.startswith('head')]
        if missing:
            raise KeyError(f'{path} lacks ViT weights {missing[:5]} (found keys like {list(sd)[:4]})')
        self.model.load_state_dict({k: v for k, v in sd.items() if k in own}, strict=False)

    def train(self, mode: bool = True):
        return super().train(False)  # always frozen

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        last = len(self.model.blocks) - 1
        feats = self.model.forward_intermediates(x, indices=[last], norm=True, output_fmt='NCHW',
                                                 intermediates_only=True)[-1]
        return self.norm(feats)
