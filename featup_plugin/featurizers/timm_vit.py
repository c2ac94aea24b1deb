"""A timm Vision Transformer as a feature extractor: patch tokens of chosen blocks as ``[B, C, h, w]`` maps
(torch + timm only).

:class:`TimmViTFeatures` is the one place that builds, checks, prunes and loads timm ViTs; the mmseg backbone
``TimmViT`` (a registered subclass), the tools' :class:`~featup_plugin.featurizers.TimmFeaturizer` (a subclass)
and detectron2's ``TimmBackbone`` (for ViT names) use it.
"""

from __future__ import annotations

import difflib
import os
import warnings
from typing import Dict, List, Mapping, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn

from ..checkpoint.io import read_checkpoint, read_state_dict
from ..layers.freeze import FrozenPartsMixin

try:  # timm is an optional dependency of the package: fail with a clear message when the class is used
    import timm
    from timm.layers import PatchEmbed
    from timm.models.vision_transformer import VisionTransformer, checkpoint_filter_fn
except ImportError:  # pragma: no cover - exercised only without timm
    timm = None

__all__ = ['TimmViTFeatures', 'is_plain_vit']

# Parts of the timm model that are removed (``prune_intermediate_layers``); their checkpoint keys are ignored.
_PRUNED_PARTS = ('head.', 'head_drop.', 'fc_norm.', 'attn_pool.')


def _require_timm(who: str) -> None:
    if timm is None:
        raise ImportError(f'{who} needs timm: pip install timm')


def _unknown_name_message(who: str, model_name: str) -> str:
    arch = model_name.split('.')[0]
    close = difflib.get_close_matches(arch, timm.list_models(), n=5, cutoff=0.6)
    hint = f' Close matches: {close}.' if close else ''
    return (
        f'{who}: timm has no model named {model_name!r} (timm {timm.__version__}).{hint} '
        "List ViT names with timm.list_models('vit_*') (add pretrained=True for those with weights, e.g. "
        "timm.list_models('vit_*dino*', pretrained=True)); a '.tag' suffix picks the weights, e.g. "
        "'vit_small_patch16_224.dino' or 'vit_small_patch14_dinov2.lvd142m'."
    )


def _probe(model_name: str, model_kwargs: Optional[dict]) -> Optional[nn.Module]:
    """The model built on the meta device (no memory, download or init), or None if it does not build there."""
    for kwargs in (dict(model_kwargs or {}), {}):
        try:
            with torch.device('meta'):
                return timm.create_model(model_name, pretrained=False, **kwargs)
        except Exception:  # noqa: BLE001 - any failure: try without the kwargs, then give up
            continue
    return None


def _architecture_problem(model: nn.Module) -> Optional[str]:
    if not isinstance(model, VisionTransformer):
        return 'vit'
    pe = model.patch_embed
    ps = getattr(pe, 'patch_size', None)
    if not isinstance(pe, PatchEmbed) or ps is None or ps[0] != ps[1]:
        return 'patch'
    return None


def is_plain_vit(model_name: str, model_kwargs: Optional[dict] = None) -> bool:
    """Whether ``model_name`` is a timm ``VisionTransformer`` with a plain square patch embedding (what
    :class:`TimmViTFeatures` accepts), checked on the meta device."""
    if timm is None or not isinstance(model_name, str) or not timm.is_model(model_name):
        return False
    probe = _probe(model_name, model_kwargs)
    return probe is not None and _architecture_problem(probe) is None


class TimmViTFeatures(FrozenPartsMixin, nn.Module):
    """A timm ``VisionTransformer`` whose patch tokens come out as feature maps.

    Args:
        model_name: timm model name, with an optional pretrained tag: ``'vit_small_patch16_224.dino'`` (DINO
            ViT-S/16), ``'vit_small_patch14_dinov2.lvd142m'`` (DINOv2), ``'vit_small_patch14_reg4_dinov2.lvd142m'``,
            ... Any model built on ``timm.models.vision_transformer.VisionTransformer`` with a plain patch
            embedding; ``timm.list_models('vit_*')`` lists the names.
        out_indices: blocks whose outputs are returned, in this order (negative: from the end; ``-1`` = last).
            Blocks after the last one asked for are removed, as are the classifier head (and ``fc_norm`` /
            attention pooling), so every parameter receives a gradient.
        pretrained: ``True``: timm's hub weights (needs the network or timm's cache); a path: a local checkpoint
            (see "Weights"); ``False``: random init.
        checkpoint_key: entry of a local checkpoint that holds the weights (e.g. ``'teacher'`` for DINO's training
            checkpoints). Default: ``'state_dict'``, else ``'model'``, else ``'teacher'``, else the file itself.
        norm: apply the ViT's final ``norm`` (LayerNorm after the last block) to every returned map, as FeatUp's
            DINO/DINOv2 featurizers do; ``False`` returns raw block outputs and removes the final norm.
        frozen: eval mode and ``requires_grad=False`` for the ViT, kept across ``.train()``.
        img_size: the size the positional embedding is built for (default: the model's); other input sizes use a
            bicubically resampled embedding.
        model_kwargs: more ``timm.create_model`` arguments (``dynamic_img_size`` / ``dynamic_img_pad`` default to
            True: any input size; ``num_classes`` is 0).
        base_kwargs: passed on to the next base class (``init_cfg`` for the mmseg subclass).

    Weights (``pretrained='path'`` and ``load_state_dict`` accept these key formats):
        this module's own ``model.<timm key>``; a bare timm model's ``<timm key>`` (timm hub files, ``.safetensors``
        too, and the original DINO / DINOv2 releases, converted by timm's ``checkpoint_filter_fn``); either behind
        ``module.`` (stripped) or ``backbone.`` (if some keys have it, only those are used). ``pos_embed`` and the
        patch embedding are resampled to the model's grid and patch. Keys of the removed parts are ignored.
        Files are read by :func:`featup_plugin.checkpoint.read_checkpoint` (tensors only).

    Outputs: a tuple of ``[B, embed_dim, ceil(H/p), ceil(W/p)]`` maps (patch tokens: the ``num_prefix_tokens``
    class/register tokens are dropped); other input sizes are zero-padded bottom/right (``dynamic_img_pad``).

    Attributes: ``out_indices`` (absolute), ``out_channels``, ``strides`` (lists, one per output), ``patch_size``,
    ``embed_dim``, ``num_prefix_tokens``, ``in_channels``, ``final_norm``, ``frozen``.
    """

    def __init__(
        self,
        model_name: str = 'vit_small_patch16_224.dino',
        out_indices: Union[int, Sequence[int]] = (-1,),
        pretrained: Union[bool, str] = False,
        checkpoint_key: Optional[str] = None,
        norm: bool = True,
        frozen: bool = False,
        img_size: Union[None, int, Tuple[int, int]] = None,
        model_kwargs: Optional[dict] = None,
        **base_kwargs,
    ):
        super().__init__(**base_kwargs)
        who = type(self).__name__
        _require_timm(who)
        if not isinstance(model_name, str) or not timm.is_model(model_name):
            raise ValueError(_unknown_name_message(who, str(model_name)))
        if not isinstance(pretrained, (bool, str)):
            raise TypeError(f'{who}: pretrained must be a bool or a checkpoint path, got {type(pretrained).__name__}')
        if isinstance(pretrained, str) and not os.path.exists(pretrained):
            raise FileNotFoundError(f'{who}: pretrained checkpoint {pretrained!r} does not exist')
        self.model_name = model_name
        self.final_norm = bool(norm)
        self.frozen = bool(frozen)

        # Check the architecture on the meta device first, so that a non-ViT name fails before any download.
        # Should a model not build there, the check after building it for real still applies.
        probe = _probe(model_name, model_kwargs)
        if probe is not None:
            self._check_architecture(probe)
            self._resolve_indices(out_indices, len(probe.blocks))
            del probe

        kwargs = dict(dynamic_img_size=True, dynamic_img_pad=True)
        kwargs.update(model_kwargs or {})
        kwargs['num_classes'] = 0
        if img_size is not None:
            kwargs['img_size'] = img_size
        model = timm.create_model(model_name, pretrained=pretrained is True, **kwargs)
        self._check_architecture(model)
        self.model = model
        self.out_indices = self._resolve_indices(out_indices, len(model.blocks))
        self.patch_size = int(model.patch_embed.patch_size[0])
        self.in_channels = int(model.patch_embed.proj.in_channels)
        self.embed_dim = int(model.embed_dim)
        self.num_prefix_tokens = int(model.num_prefix_tokens)
        self.out_channels: List[int] = [self.embed_dim] * len(self.out_indices)
        self.strides: List[int] = [self.patch_size] * len(self.out_indices)

        self.register_load_state_dict_pre_hook(TimmViTFeatures._convert_loaded_keys)
        if isinstance(pretrained, str):
            self.load_checkpoint(pretrained, checkpoint_key)
        # Remove what the outputs do not use (after loading: checkpoints hold the full model).
        model.prune_intermediate_layers(sorted(set(self.out_indices)), prune_norm=not self.final_norm, prune_head=True)
        self.freeze_parts()

    # -- construction helpers ---------------------------------------------------------------------------------
    def _resolve_indices(self, out_indices, depth: int) -> Tuple[int, ...]:
        who = type(self).__name__
        indices = [out_indices] if isinstance(out_indices, int) else list(out_indices)
        if not indices:
            raise ValueError(f'{who}: out_indices is empty')
        absolute = []
        for i in indices:
            if not isinstance(i, int) or isinstance(i, bool) or not -depth <= i < depth:
                raise ValueError(
                    f'{who}: out_indices {tuple(indices)} out of range: {self.model_name} has '
                    f'{depth} blocks (indices {-depth}..{depth - 1}, -1 = last)'
                )
            absolute.append(i % depth)
        return tuple(absolute)

    def _check_architecture(self, model: nn.Module) -> None:
        who, name = type(self).__name__, self.model_name
        problem = _architecture_problem(model)
        if problem == 'vit':
            raise ValueError(
                f'{who}: {name!r} is a {type(model).__name__}, not a timm VisionTransformer. Use a ViT name '
                "(timm.list_models('vit_*')); for other architectures use a CNN backbone (e.g. mmseg's "
                "type='ResNetV1c', 'MixVisionTransformer', or detectron2's TimmBackbone with features_only)."
            )
        if problem == 'patch':
            raise ValueError(
                f'{who}: {name!r} uses a {type(model.patch_embed).__name__} patch embedding (hybrid '
                'or non-square patches), which is not supported: use a plain ViT'
            )

    def frozen_parts(self):
        return (self.model,) if self.frozen else ()

    # -- weights ----------------------------------------------------------------------------------------------
    def _to_own_keys(self, sd: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
        """Any accepted key format (see the class docstring) -> this module's ``model.<timm key>``."""
        if not sd:
            return sd
        sd = {k[len('module.') :] if k.startswith('module.') else k: v for k, v in sd.items()}
        if any(k.startswith('backbone.') for k in sd):
            sd = {k[len('backbone.') :]: v for k, v in sd.items() if k.startswith('backbone.')}
        own = {k[len('model.') :]: v for k, v in sd.items() if k.startswith('model.')}
        others = {k: v for k, v in sd.items() if not k.startswith('model.')} if own else {}
        timm_sd = own if own else sd
        if timm_sd:
            timm_sd = checkpoint_filter_fn(dict(timm_sd), self.model)
        kept = len(self.model.blocks)
        norm_removed = isinstance(self.model.norm, nn.Identity)

        def removed(k: str) -> bool:
            if k.startswith(_PRUNED_PARTS) or (norm_removed and k.startswith('norm.')):
                return True
            if k.startswith('blocks.'):
                idx = k.split('.')[1]
                return idx.isdigit() and int(idx) >= kept
            return False

        out = {'model.' + k: v for k, v in timm_sd.items() if not removed(k)}
        out.update(others)  # keys that are neither ours nor timm's stay, to be reported as unexpected
        return out

    @staticmethod
    def _convert_loaded_keys(
        module: 'TimmViTFeatures', state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
    ) -> None:
        # load_state_dict pre-hook: runs for torch's load_state_dict and for mmengine's (init_cfg, load_from).
        keys = [k for k in state_dict if k.startswith(prefix)]
        if not keys:
            return
        converted = module._to_own_keys({k[len(prefix) :]: state_dict[k] for k in keys})
        for k in keys:
            del state_dict[k]
        for k, v in converted.items():
            state_dict[prefix + k] = v

    def load_checkpoint(self, path: str, checkpoint_key: Optional[str] = None) -> None:
        """Load a local checkpoint (any key format of the class docstring); raise if a parameter is missing."""
        who = type(self).__name__
        ckpt = read_checkpoint(path)
        if not isinstance(ckpt, Mapping):
            raise ValueError(f'{who}: {path!r} does not hold a dict of weights (got {type(ckpt).__name__})')
        key = checkpoint_key
        if key is not None and key not in ckpt:
            raise ValueError(f'{who}: checkpoint_key {key!r} is not in {path!r}; its top-level keys: {list(ckpt)[:20]}')
        if (
            key is None
            and not any(isinstance(ckpt.get(k), Mapping) for k in ('state_dict', 'model'))
            and isinstance(ckpt.get('teacher'), Mapping)
        ):
            key = 'teacher'  # DINO's training checkpoints
        tensors = read_state_dict(ckpt, key=key, where=str(path))
        missing, unexpected = self.load_state_dict(tensors, strict=False)
        if missing:
            raise RuntimeError(
                f'{who}: {path!r} does not fit {self.model_name}: {len(missing)} parameters '
                f'missing, e.g. {missing[:8]}; unexpected keys, e.g. {unexpected[:8]}'
            )
        if unexpected:
            warnings.warn(
                f'{who}: ignored {len(unexpected)} keys of {path!r} that {self.model_name} does not '
                f'have, e.g. {unexpected[:8]}'
            )

    # -- forward ----------------------------------------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, ...]:
        who = type(self).__name__
        if not isinstance(x, torch.Tensor) or x.dim() != 4 or x.shape[1] != self.in_channels:
            shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise ValueError(f'{who} expects a [B, {self.in_channels}, H, W] image batch, got {shape}')
        if x.shape[-2] < 1 or x.shape[-1] < 1:
            raise ValueError(f'{who}: empty image batch {tuple(x.shape)}')
        take = sorted(set(self.out_indices))
        # forward_intermediates: patch embed (zero-pads to a multiple of the patch), resampled pos_embed, blocks;
        # returns the chosen blocks' tokens (after the final norm if asked) without the prefix tokens, as NCHW.
        feats = self.model.forward_intermediates(
            x, indices=take, norm=self.final_norm, output_fmt='NCHW', intermediates_only=True
        )
        by_index = dict(zip(take, feats))
        return tuple(by_index[i] for i in self.out_indices)
