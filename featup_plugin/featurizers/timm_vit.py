"""A timm Vision Transformer as a feature extractor: patch tokens of chosen blocks as ``[B, C, h, w]`` maps
(torch + timm only).

Beyond timm's own forward, three choices that FeatUp's featurizers make (``featup_plugin.featurizers.featup``):
``pos_embed_interp`` (how the positional embedding is resampled for other grids: timm's, or the code of DINO /
DINOv2 / MaskCLIP, or FeatUp's CLIP fork), ``token_head`` (the classifier head, e.g. CLIP's visual projection,
applied to every patch token) and ``last_block='value'`` (MaskCLIP's value-embedding path in the last block).

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
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from ..checkpoint.io import read_checkpoint, read_state_dict
from ..layers.freeze import FrozenPartsMixin

try:  # timm is an optional dependency of the package: fail with a clear message when the class is used
    import timm
    from timm.layers import PatchEmbed, resample_abs_pos_embed
    from timm.models.vision_transformer import VisionTransformer, checkpoint_filter_fn
except ImportError:  # pragma: no cover - exercised only without timm
    timm = None

__all__ = ['TimmViTFeatures', 'is_plain_vit', 'resample_pos_embed', 'POS_EMBED_INTERP']

# Parts of the timm model that are removed (``prune_intermediate_layers``); their checkpoint keys are ignored.
_PRUNED_PARTS = ('head.', 'head_drop.', 'fc_norm.', 'attn_pool.')

#: How :func:`resample_pos_embed` resamples a positional embedding to another token grid:
#: ``'timm'``: timm's ``resample_abs_pos_embed`` (bicubic to the exact size, antialiased);
#: ``'dino'``: DINO's ``interpolate_pos_encoding`` (also DINOv2's and FeatUp's MaskCLIP's): bicubic with
#: ``scale_factor = (n + 0.1) / N`` per axis, no antialiasing;
#: ``'bilinear'``: bilinear to the exact size with ``align_corners=True`` (FeatUp's CLIP fork, which samples the
#: embedding with ``grid_sample`` on a ``linspace(-1, 1, n)`` grid).
POS_EMBED_INTERP = ('timm', 'dino', 'bilinear')


def resample_pos_embed(
    pos_embed: torch.Tensor,
    new_size: Sequence[int],
    old_size: Sequence[int],
    num_prefix_tokens: int = 1,
    mode: str = 'timm',
) -> torch.Tensor:
    """``pos_embed [1, prefix + oh*ow, C]`` resampled to the ``new_size`` token grid (prefix entries unchanged);
    ``mode`` is one of :data:`POS_EMBED_INTERP`. The embedding is returned as is when the grids are equal."""
    if mode not in POS_EMBED_INTERP:
        raise ValueError(f'pos_embed_interp must be one of {POS_EMBED_INTERP}, got {mode!r}')
    nh, nw = int(new_size[0]), int(new_size[1])
    oh, ow = int(old_size[0]), int(old_size[1])
    if (nh, nw) == (oh, ow):
        return pos_embed
    if mode == 'timm':
        return resample_abs_pos_embed(
            pos_embed, new_size=(nh, nw), old_size=(oh, ow), num_prefix_tokens=num_prefix_tokens
        )
    prefix, grid = pos_embed[:, :num_prefix_tokens], pos_embed[:, num_prefix_tokens:]
    dim = grid.shape[-1]
    grid = grid.float().reshape(1, oh, ow, dim).permute(0, 3, 1, 2)
    if mode == 'dino':
        # the 0.1 offset (facebookresearch/dino issue 8) makes the scale, hence the sampling positions, differ
        # slightly from an exact-size resize; the output size is floor(N * (n + 0.1) / N) = n
        grid = F.interpolate(grid, scale_factor=((nh + 0.1) / oh, (nw + 0.1) / ow), mode='bicubic', align_corners=False)
        if tuple(grid.shape[-2:]) != (nh, nw):  # pragma: no cover - floor arithmetic; DINO asserts the same
            raise RuntimeError(f'dino pos_embed interpolation gave {tuple(grid.shape[-2:])}, expected {(nh, nw)}')
    else:
        grid = F.interpolate(grid, size=(nh, nw), mode='bilinear', align_corners=True)
    grid = grid.permute(0, 2, 3, 1).reshape(1, nh * nw, dim).to(pos_embed.dtype)
    return torch.cat([prefix, grid], dim=1) if num_prefix_tokens else grid


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
            resampled embedding (``pos_embed_interp``).
        pos_embed_interp: how the embedding is resampled for other token grids, one of :data:`POS_EMBED_INTERP`:
            ``'timm'`` (default, timm's), ``'dino'`` (DINO / DINOv2 / MaskCLIP code), ``'bilinear'`` (FeatUp's
            CLIP fork); see :func:`resample_pos_embed`.
        token_head: apply the model's classifier head (a ``Linear``, e.g. CLIP's visual projection
            ``vit_base_patch16_clip_224.openai``: 768 -> 512) to every patch token after the final norm, as FeatUp's
            CLIP featurizers do; the head is kept (``num_classes`` from the model's config) and ``out_channels`` is
            its width. Needs ``norm=True``.
        last_block: ``'full'`` (default) or ``'value'``: the deepest block in ``out_indices`` returns MaskCLIP's
            value embedding instead of its output, ``attn.proj(v)`` with ``v`` the value projection of
            ``norm1(x)`` (no attention, residual or MLP), as FeatUp's MaskCLIP featurizer.
        model_kwargs: more ``timm.create_model`` arguments (``dynamic_img_size`` / ``dynamic_img_pad`` default to
            True: any input size; ``num_classes`` is 0 unless ``token_head``).
        base_kwargs: passed on to the next base class (``init_cfg`` for the mmseg subclass).

    Weights (``pretrained='path'`` and ``load_state_dict`` accept these key formats):
        this module's own ``model.<timm key>``; a bare timm model's ``<timm key>`` (timm hub files, ``.safetensors``
        too, and the original DINO / DINOv2 releases, converted by timm's ``checkpoint_filter_fn``); either behind
        ``module.`` (stripped) or ``backbone.`` (if some keys have it, only those are used). ``pos_embed`` and the
        patch embedding are resampled to the model's grid and patch. Keys of the removed parts are ignored.
        Files are read by :func:`featup_plugin.checkpoint.read_checkpoint` (tensors only).

    Outputs: a tuple of ``[B, C, ceil(H/p), ceil(W/p)]`` maps (``C``: ``embed_dim``, or the head's width with
    ``token_head``; patch tokens: the ``num_prefix_tokens`` class/register tokens are dropped); other input sizes
    are zero-padded bottom/right (``dynamic_img_pad``). The forward is timm's (patch embedding, positional
    embedding, ``norm_pre``, blocks, final ``norm``) with the three options above; with their defaults it equals
    timm's ``forward_intermediates``.

    Attributes: ``out_indices`` (absolute), ``out_channels``, ``strides`` (lists, one per output), ``patch_size``,
    ``embed_dim``, ``num_prefix_tokens``, ``in_channels``, ``final_norm``, ``frozen``, ``pos_embed_interp``,
    ``token_head``, ``last_block``.
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
        pos_embed_interp: str = 'timm',
        token_head: bool = False,
        last_block: str = 'full',
        **base_kwargs,
    ):
        super().__init__(**base_kwargs)
        who = type(self).__name__
        _require_timm(who)
        if pos_embed_interp not in POS_EMBED_INTERP:
            raise ValueError(f'{who}: pos_embed_interp must be one of {POS_EMBED_INTERP}, got {pos_embed_interp!r}')
        if last_block not in ('full', 'value'):
            raise ValueError(f"{who}: last_block must be 'full' or 'value' (MaskCLIP), got {last_block!r}")
        if token_head and not norm:
            raise ValueError(f'{who}: token_head=True applies the head to normed tokens (as CLIP does): set norm=True')
        if not isinstance(model_name, str) or not timm.is_model(model_name):
            raise ValueError(_unknown_name_message(who, str(model_name)))
        if not isinstance(pretrained, (bool, str)):
            raise TypeError(f'{who}: pretrained must be a bool or a checkpoint path, got {type(pretrained).__name__}')
        if isinstance(pretrained, str) and not os.path.exists(pretrained):
            raise FileNotFoundError(f'{who}: pretrained checkpoint {pretrained!r} does not exist')
        self.model_name = model_name
        self.final_norm = bool(norm)
        self.frozen = bool(frozen)
        self.pos_embed_interp = pos_embed_interp
        self.token_head = bool(token_head)
        self.last_block = last_block

        # Check the architecture on the meta device first, so that a non-ViT name fails before any download.
        # Should a model not build there, the check after building it for real still applies.
        probe = _probe(model_name, model_kwargs)
        if probe is not None:
            self._check_architecture(probe)
            self._resolve_indices(out_indices, len(probe.blocks))
            del probe

        kwargs = dict(dynamic_img_size=True, dynamic_img_pad=True)
        kwargs.update(model_kwargs or {})
        if not self.token_head:
            kwargs['num_classes'] = 0
        if img_size is not None:
            kwargs['img_size'] = img_size
        model = timm.create_model(model_name, pretrained=pretrained is True, **kwargs)
        self._check_architecture(model)
        self.model = model
        self.out_indices = self._resolve_indices(out_indices, len(model.blocks))
        self._check_options(model)
        self.patch_size = int(model.patch_embed.patch_size[0])
        self.in_channels = int(model.patch_embed.proj.in_channels)
        self.embed_dim = int(model.embed_dim)
        self.num_prefix_tokens = int(model.num_prefix_tokens)
        width = int(model.head.out_features) if self.token_head else self.embed_dim
        self.out_channels: List[int] = [width] * len(self.out_indices)
        self.strides: List[int] = [self.patch_size] * len(self.out_indices)

        self.register_load_state_dict_pre_hook(TimmViTFeatures._convert_loaded_keys)
        if isinstance(pretrained, str):
            self.load_checkpoint(pretrained, checkpoint_key)
        # Remove what the outputs do not use (after loading: checkpoints hold the full model).
        model.prune_intermediate_layers(
            sorted(set(self.out_indices)), prune_norm=not self.final_norm, prune_head=not self.token_head
        )
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

    def _check_options(self, model: nn.Module) -> None:
        who, name = type(self).__name__, self.model_name
        if self.token_head:
            head = getattr(model, 'head', None)
            if not isinstance(head, nn.Linear):
                raise ValueError(
                    f'{who}: token_head=True needs a Linear classifier head, but {name!r} has '
                    f'{type(head).__name__} (num_classes=0?); e.g. CLIP towers have their projection there '
                    "('vit_base_patch16_clip_224.openai')"
                )
            if not isinstance(getattr(model, 'fc_norm', None), nn.Identity) or getattr(model, 'attn_pool', None):
                raise ValueError(
                    f'{who}: token_head=True needs a head applied to the token itself, but {name!r} pools with '
                    'fc_norm / attention pooling before its head'
                )
        if self.last_block == 'value':
            attn = model.blocks[max(self.out_indices)].attn
            qkv = getattr(attn, 'qkv', None)
            if not isinstance(qkv, nn.Linear) or getattr(attn, 'gate', None) is not None:
                raise ValueError(
                    f"{who}: last_block='value' needs a fused qkv Linear in the block's attention (timm's "
                    f'Attention), {name!r} has {type(attn).__name__}'
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

        pruned = tuple(p for p in _PRUNED_PARTS if not (self.token_head and p == 'head.'))

        def removed(k: str) -> bool:
            if k.startswith(pruned) or (norm_removed and k.startswith('norm.')):
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
        self.load_tensors(read_state_dict(ckpt, key=key, where=str(path)), where=repr(path))

    def load_tensors(self, tensors: Mapping[str, torch.Tensor], where: str = 'the state dict') -> None:
        """Load a state dict in any key format of the class docstring; raise if a parameter is missing, warn
        about keys the model does not have."""
        who = type(self).__name__
        missing, unexpected = self.load_state_dict(dict(tensors), strict=False)
        if missing:
            raise RuntimeError(
                f'{who}: {where} does not fit {self.model_name}: {len(missing)} parameters '
                f'missing, e.g. {missing[:8]}; unexpected keys, e.g. {unexpected[:8]}'
            )
        if unexpected:
            warnings.warn(
                f'{who}: ignored {len(unexpected)} keys of {where} that {self.model_name} does not '
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
        m = self.model
        tokens, grid = self._embed(x)
        take = set(self.out_indices)
        deepest = max(take)
        found = {}
        for i, blk in enumerate(m.blocks):
            if i == deepest and self.last_block == 'value':
                found[i] = self._value_path(blk, tokens)
                break
            if m.grad_checkpointing and torch.is_grad_enabled() and not torch.jit.is_scripting():
                tokens = checkpoint(blk, tokens, use_reentrant=False)
            else:
                tokens = blk(tokens)
            if i in take:
                found[i] = tokens
            if i == deepest:
                break
        maps = {i: self._to_map(t, grid) for i, t in found.items()}
        return tuple(maps[i] for i in self.out_indices)

    def _embed(self, x: torch.Tensor) -> Tuple[torch.Tensor, Tuple[int, int]]:
        """Patch embedding (zero-pads to a multiple of the patch), prefix tokens and the positional embedding
        resampled to the token grid by ``pos_embed_interp``, ``pos_drop``, ``patch_drop``, ``norm_pre`` (timm's
        ``_pos_embed`` and the start of ``forward_intermediates``). Returns ``([B, N, C] tokens, (h, w))``."""
        m = self.model
        feat = m.patch_embed(x)
        if feat.dim() == 4:  # dynamic_img_size: NHWC
            b, h, w, c = feat.shape
            feat = feat.reshape(b, h * w, c)
        else:
            h, w = (int(v) for v in m.patch_embed.dynamic_feat_size(x.shape[-2:]))
        pos = None
        if m.pos_embed is not None:
            prefix = 0 if m.no_embed_class else m.num_prefix_tokens
            pos = resample_pos_embed(m.pos_embed, (h, w), m.patch_embed.grid_size, prefix, self.pos_embed_interp)
        to_cat = [t.expand(feat.shape[0], -1, -1) for t in (m.cls_token, m.reg_token) if t is not None]
        if pos is not None and m.no_embed_class:  # deit-3 / registers: the prefix tokens get no position
            feat = feat + pos
        if to_cat:
            feat = torch.cat(to_cat + [feat], dim=1)
        if pos is not None and not m.no_embed_class:
            feat = feat + pos
        return m.norm_pre(m.patch_drop(m.pos_drop(feat))), (h, w)

    @staticmethod
    def _value_path(blk: nn.Module, tokens: torch.Tensor) -> torch.Tensor:
        """MaskCLIP's last block: ``attn.proj(attn.norm(v))`` with ``v = norm1(x) W_v + b_v`` (the value third of
        the fused qkv projection); ``attn.norm`` is the identity in CLIP."""
        attn = blk.attn
        c = attn.qkv.out_features // 3
        bias = attn.qkv.bias[2 * c :] if attn.qkv.bias is not None else None
        v = F.linear(blk.norm1(tokens), attn.qkv.weight[2 * c :], bias)
        return attn.proj(attn.norm(v))

    def _to_map(self, tokens: torch.Tensor, grid: Tuple[int, int]) -> torch.Tensor:
        """Final norm (``norm``), patch tokens only, the head on each token (``token_head``), as ``[B, C, h, w]``."""
        m = self.model
        if self.final_norm:
            tokens = m.norm(tokens)
        patches = tokens[:, self.num_prefix_tokens :].reshape(tokens.shape[0], grid[0], grid[1], -1)
        if self.token_head:
            patches = m.head(patches)
        return patches.permute(0, 3, 1, 2).contiguous()
