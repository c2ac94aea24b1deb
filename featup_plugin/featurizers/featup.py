"""FeatUp's six featurizers: the frozen backbones its official ``{name}_jbu_stack_cocostuff.ckpt`` upsamplers were
trained on, rebuilt on timm with FeatUp's choices of model, layer, token handling and positional-embedding
resampling (torch + timm only). An upsampler applied to other features than its own is meaningless, hence one spec
per checkpoint name.

``FeatUpFeaturizer('dino16', pretrained=True)(img)`` takes ImageNet-normalised RGB (what FeatUp feeds every
backbone, CLIP and the AugReg ViT included) and returns ``[B, dim, h, w]``. The facts, from FeatUp's MIT code
(``featup/featurizers/util.py`` ``get_featurizer(name, "token")``, ``DINO.py``, ``DINOv2.py``, ``CLIP.py`` with
mhamilton723/CLIP's ``forward_spatial``, ``MaskCLIP.py`` with ``featurizers/maskclip``, ``ResNet.py``), are in
``docs/hub.md#featurizers``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Dict, List, Mapping, Optional, Union

import torch
import torch.nn as nn

from ..checkpoint.featup import OFFICIAL_FEAT_DIMS
from ..checkpoint.io import read_state_dict
from ..layers.freeze import FrozenPartsMixin
from ..upsamplers.layers import ChannelNorm
from .resnet import TimmResNetFeatures
from .timm_vit import TimmViTFeatures

__all__ = [
    'FEATUP_FEATURIZERS',
    'FEATUP_RESNET50_URL',
    'FeaturizerSpec',
    'FeatUpFeaturizer',
    'WeightsDownloadError',
    'featurizer_spec',
    'list_featurizers',
]

#: The torchvision ResNet-50 file FeatUp's ``featurizers/modules/resnet.py`` loads (``model_urls['resnet50']``).
FEATUP_RESNET50_URL = 'https://download.pytorch.org/models/resnet50-19c8e357.pth'


class WeightsDownloadError(RuntimeError):
    """Pretrained weights could not be downloaded (offline, blocked, ...); the message names the source and the
    way to pass a local file instead."""


@dataclass(frozen=True)
class FeaturizerSpec:
    """What one of FeatUp's featurizers is: ``model`` (a timm name with its weights tag), ``kind`` (``'vit'`` or
    ``'resnet'``), ``dim`` and ``stride`` of its output, the ``TimmViTFeatures`` options that reproduce FeatUp's
    forward (``vit_options``), where ``pretrained=True`` takes the weights from (``weights``) and which FeatUp
    code it follows (``featup``)."""

    name: str
    model: str
    kind: str
    dim: int
    stride: int
    description: str
    featup: str
    weights: str
    vit_options: Dict[str, object] = field(default_factory=dict)


def _vit(name, model, stride, description, featup, weights, **options) -> FeaturizerSpec:
    return FeaturizerSpec(name, model, 'vit', OFFICIAL_FEAT_DIMS[name], stride, description, featup, weights, options)


#: FeatUp's featurizers by checkpoint name (``hubconf.py`` names; ``featup/featurizers/util.py``).
FEATUP_FEATURIZERS: Dict[str, FeaturizerSpec] = {
    s.name: s
    for s in (
        _vit(
            'vit',
            'vit_small_patch16_224.augreg_in21k_ft_in1k',
            16,
            'supervised ViT-S/16 (AugReg, ImageNet-21k -> 1k): last-block tokens after the final LayerNorm',
            "DINO.py: DINOFeaturizer('vit_small_patch16_224'), DINO's ViT-S code with timm 0.4.12's weights",
            "timm 'vit_small_patch16_224.augreg_in21k_ft_in1k' (timm 0.4.12's default vit_small_patch16_224)",
            pos_embed_interp='dino',
        ),
        _vit(
            'dino16',
            'vit_small_patch16_224.dino',
            16,
            'DINO ViT-S/16: last-block tokens after the final LayerNorm',
            "DINO.py: DINOFeaturizer('dino_vits16'), torch.hub facebookresearch/dino",
            "timm 'vit_small_patch16_224.dino' (dino_deitsmall16_pretrain.pth)",
            pos_embed_interp='dino',
        ),
        _vit(
            'dinov2',
            'vit_small_patch14_dinov2.lvd142m',
            14,
            "DINOv2 ViT-S/14: 'x_norm_patchtokens' (last-block tokens after the final LayerNorm)",
            "DINOv2.py: torch.hub facebookresearch/dinov2 'dinov2_vits14', forward_features",
            "timm 'vit_small_patch14_dinov2.lvd142m' (dinov2_vits14_pretrain.pth)",
            pos_embed_interp='dino',
        ),
        _vit(
            'clip',
            'vit_base_patch16_clip_quickgelu_224.openai',
            16,
            'OpenAI CLIP ViT-B/16 image tower: every token through ln_post and the visual projection (768 -> 512)',
            "CLIP.py: mhamilton723/CLIP 'ViT-B/16', get_visual_features -> VisionTransformer.forward_spatial",
            "timm 'vit_base_patch16_clip_quickgelu_224.openai' (OpenAI's ViT-B-16.pt, QuickGELU)",
            pos_embed_interp='bilinear',
            token_head=True,
        ),
        _vit(
            'maskclip',
            'vit_base_patch16_clip_quickgelu_224.openai',
            16,
            "MaskCLIP on CLIP ViT-B/16: the last block's value embedding (v, out_proj), ln_post, visual projection",
            'MaskCLIP.py: featurizers/maskclip get_patch_encodings (ResidualAttentionBlock.forward_v)',
            "timm 'vit_base_patch16_clip_quickgelu_224.openai' (OpenAI's ViT-B-16.pt, QuickGELU)",
            pos_embed_interp='dino',
            token_head=True,
            last_block='value',
        ),
        FeaturizerSpec(
            'resnet50',
            'resnet50',
            'resnet',
            OFFICIAL_FEAT_DIMS['resnet50'],
            32,
            "ResNet-50 (torchvision's ImageNet weights): layer4, after its last ReLU",
            'ResNet.py + modules/resnet.py: resnet50(pretrained=True).get_layer(img, -1)',
            f'{FEATUP_RESNET50_URL} (through torch.hub)',
        ),
    )
}


def featurizer_spec(name: str) -> FeaturizerSpec:
    """The spec of one of FeatUp's featurizers; ``ValueError`` listing the names for anything else."""
    key = name.lower() if isinstance(name, str) else name
    if key not in FEATUP_FEATURIZERS:
        raise ValueError(
            f"unknown FeatUp featurizer {name!r}: FeatUp's official upsamplers exist for {list(FEATUP_FEATURIZERS)}"
        )
    return FEATUP_FEATURIZERS[key]


def _featup_backbone_keys(sd: Mapping[str, torch.Tensor]) -> Optional[Dict[str, torch.Tensor]]:
    """The backbone of a FeatUp Lightning / hub state dict (``model.0.<featurizer keys>``; FeatUp's featurizers
    keep their network under ``.model``, so the result has this module's ``model.*`` keys), or None."""
    prefix = 'model.0.'
    if not any(k.startswith(prefix) for k in sd):
        return None
    return {k[len(prefix) :]: v for k, v in sd.items() if k.startswith(prefix)}


class FeatUpFeaturizer(FrozenPartsMixin, nn.Module):
    """One of FeatUp's featurizers (:data:`FEATUP_FEATURIZERS`): ``forward(img) -> [B, dim, h, w]``.

    Args:
        name: ``'vit'``, ``'dino16'``, ``'dinov2'``, ``'clip'``, ``'maskclip'`` or ``'resnet50'``.
        pretrained: ``True``: the backbone's published weights, downloaded by timm (ViTs, from the Hugging Face
            hub) or torch.hub (ResNet-50: FeatUp's torchvision file); needs the network once (then the caches).
            ``False``: random init (no download).
        weights: a local backbone checkpoint instead: a timm / torchvision / original-release state dict (DINO,
            DINOv2, OpenAI CLIP's ``visual.*``), this module's or its backbone's keys, or a FeatUp Lightning
            checkpoint / hub state dict (its frozen backbone under ``model.0.*``).
        use_norm: FeatUp's ``ChannelNorm(dim)`` (a LayerNorm over channels) after the backbone, as its
            ``use_norm=True`` hub models and its JBU training do.
        frozen: eval mode and no gradients, kept across ``.train()`` (FeatUp's featurizers are frozen).
        trust: read ``weights`` with a full unpickle when it holds Python objects (trusted files only).
        model_kwargs: more ``timm.create_model`` arguments (e.g. a small ``depth`` for tests; ``dim`` then
            follows the model).
        base_kwargs: passed on to the next base class (``init_cfg`` for the mmseg subclass).

    Input: ImageNet-normalised RGB ``[B, 3, H, W]`` of any size (ViTs zero-pad to a multiple of the patch).
    Attributes: ``name``, ``spec``, ``dim`` (= ``feat_dim``), ``stride``, ``use_norm``, ``backbone``
    (``TimmViTFeatures`` / ``TimmResNetFeatures``), ``norm``, ``weights_source`` (where the weights came from).
    """

    def __init__(
        self,
        name: str,
        pretrained: bool = False,
        weights: Optional[str] = None,
        use_norm: bool = False,
        frozen: bool = True,
        trust: bool = False,
        model_kwargs: Optional[dict] = None,
        **base_kwargs,
    ):
        super().__init__(**base_kwargs)
        spec = featurizer_spec(name)
        if not isinstance(pretrained, bool):
            raise TypeError(
                f'FeatUpFeaturizer: pretrained must be True or False, got {pretrained!r} (local files: weights=PATH)'
            )
        if weights is not None and not os.path.isfile(os.path.expanduser(str(weights))):
            raise FileNotFoundError(f'FeatUpFeaturizer({spec.name!r}): backbone weights {weights!r} do not exist')
        self.name, self.spec, self.use_norm = spec.name, spec, bool(use_norm)
        download = bool(pretrained) and weights is None
        try:
            self.backbone = self._build(spec, download, frozen, model_kwargs)
        except WeightsDownloadError:
            raise
        except Exception as err:  # noqa: BLE001 - timm / huggingface_hub / urllib raise many error types offline
            if not download:
                raise
            raise WeightsDownloadError(
                f'FeatUpFeaturizer({spec.name!r}): could not load the pretrained backbone weights from '
                f'{spec.weights}: {type(err).__name__}: {err}. Offline? Pass a local file with weights=PATH '
                '(backbone_weights=PATH in featup_plugin.hub.load), or pretrained=False for random weights.'
            ) from err
        if weights is not None:
            self.load_backbone_weights(weights, trust=trust)
            self.weights_source = str(weights)
        else:
            self.weights_source = spec.weights if download else 'random init (pretrained=False)'
        self.dim = self.feat_dim = int(
            self.backbone.out_channels[0] if spec.kind == 'vit' else self.backbone.out_channels
        )
        self.stride = int(self.backbone.strides[0] if spec.kind == 'vit' else self.backbone.stride)
        if not model_kwargs and (self.dim, self.stride) != (spec.dim, spec.stride):  # pragma: no cover - spec bug
            raise RuntimeError(f'{spec.model} gives {self.dim} channels at stride {self.stride}, not {spec.dim}')
        self.norm = ChannelNorm(self.dim) if self.use_norm else nn.Identity()
        self.frozen = bool(frozen)
        self.freeze_parts()

    @staticmethod
    def _build(spec: FeaturizerSpec, download: bool, frozen: bool, model_kwargs: Optional[dict]) -> nn.Module:
        if spec.kind == 'vit':
            return TimmViTFeatures(
                spec.model,
                out_indices=-1,
                pretrained=download,
                norm=True,
                frozen=frozen,
                model_kwargs=model_kwargs,
                **spec.vit_options,
            )
        return TimmResNetFeatures(
            spec.model,
            stage=4,
            pretrained=FEATUP_RESNET50_URL if download else False,
            frozen=frozen,
            model_kwargs=model_kwargs,
        )

    def frozen_parts(self):
        norm = getattr(self, 'norm', None)
        return (self.backbone, norm) if self.frozen and norm is not None else ()

    def load_backbone_weights(self, source: Union[str, Mapping[str, torch.Tensor]], trust: bool = False) -> None:
        """Load the backbone from a file or state dict (formats: see the class docstring); raises if a parameter
        is missing."""
        where = str(source) if isinstance(source, (str, os.PathLike)) else 'the given state dict'
        sd = read_state_dict(source, trust=trust, where=where)
        sd = _featup_backbone_keys(sd) or sd
        if any(k.startswith('backbone.') for k in sd):  # this module's own state dict (or a model holding it)
            sd = {k[len('backbone.') :]: v for k, v in sd.items() if k.startswith('backbone.')}
        self.backbone.load_tensors(sd, where=where)

    def forward(self, img: torch.Tensor) -> torch.Tensor:
        feats = self.backbone(img)
        return self.norm(feats[0] if isinstance(feats, tuple) else feats)

    def extra_repr(self) -> str:
        fields = ('name', 'dim', 'stride', 'use_norm', 'weights_source')
        return ', '.join(f'{f}={getattr(self, f)!r}' for f in fields if hasattr(self, f))


def list_featurizers() -> List[str]:
    """The names of FeatUp's featurizers."""
    return list(FEATUP_FEATURIZERS)
