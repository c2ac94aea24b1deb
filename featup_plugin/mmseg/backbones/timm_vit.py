"""``backbone=dict(type='TimmViT', ...)``: a timm Vision Transformer (DINO, DINOv2, plain ViT) as an mmseg backbone.

The backbone returns the patch tokens of chosen transformer blocks as ``[B, C, ceil(H/p), ceil(W/p)]`` maps, for
any input size, so that the ``FeatUpJBU`` neck can upsample them::

    backbone=dict(type='TimmViT', model_name='vit_small_patch16_224.dino', pretrained=True, frozen=True),
    neck=dict(type='FeatUpJBU', in_channels=384, in_index=0, feature_strides=16, out_size=None, output_stride=4),
    decode_head=dict(type='FCNHead', in_channels=384, in_index=0, ...)
"""
from __future__ import annotations

import difflib
import os
import warnings
from typing import Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
from mmengine.model import BaseModule
from mmseg.registry import MODELS

try:  # timm is an optional dependency of the package: fail with a clear message when the backbone is used
    import timm
    from timm.layers import PatchEmbed
    from timm.models.vision_transformer import VisionTransformer, checkpoint_filter_fn
except ImportError:  # pragma: no cover - exercised only without timm
    timm = None

# Parts of the timm model that TimmViT removes (``prune_intermediate_layers``); their checkpoint keys are ignored.
_PRUNED_PARTS = ('head.', 'head_drop.', 'fc_norm.', 'attn_pool.')


def _unknown_name_message(model_name: str) -> str:
    arch = model_name.split('.')[0]
    close = difflib.get_close_matches(arch, timm.list_models(), n=5, cutoff=0.6)
    hint = f' Close matches: {close}.' if close else ''
    return (f"TimmViT: timm has no model named {model_name!r} (timm {timm.__version__}).{hint} "
            "List ViT names with timm.list_models('vit_*') (add pretrained=True for those with weights, e.g. "
            "timm.list_models('vit_*dino*', pretrained=True)); a '.tag' suffix picks the weights, e.g. "
            "'vit_small_patch16_224.dino' or 'vit_small_patch14_dinov2.lvd142m'.")


@MODELS.register_module()
class TimmViT(BaseModule):
    """A timm ``VisionTransformer`` whose patch tokens come out as feature maps, for the ``FeatUpJBU`` neck.

    Args:
        model_name: timm model name, with an optional pretrained tag: ``'vit_small_patch16_224.dino'`` (DINO
            ViT-S/16, what FeatUp's ``dino16`` upsampler was trained on), ``'vit_small_patch14_dinov2.lvd142m'``
            (DINOv2), ``'vit_small_patch14_reg4_dinov2.lvd142m'``, ``'vit_small_patch16_224'``, ... Any timm model
            built on ``timm.models.vision_transformer.VisionTransformer`` with a plain patch embedding works;
            ``timm.list_models('vit_*')`` lists the names.
        out_indices: transformer blocks whose outputs are returned, in this order (negative: from the end;
            ``-1`` = last block). Blocks after the last one asked for are removed, as are the classifier head
            (and ``fc_norm`` / attention pooling), so every parameter receives a gradient.
        pretrained: ``True`` loads timm's hub weights for ``model_name`` (needs the network or timm's cache);
            a path (``str``) loads a local checkpoint (see "Weights" below); ``False``: random init.
        checkpoint_key: entry of a local checkpoint that holds the weights (e.g. ``'teacher'`` for DINO's full
            training checkpoints). Default: ``'state_dict'``, else ``'model'``, else ``'teacher'``, else the file
            itself.
        norm: apply the ViT's final ``norm`` layer (its LayerNorm after the last block) to every returned map,
            as FeatUp does: its DINO featurizer takes ``get_intermediate_feat(img, norm=True)`` and its DINOv2
            featurizer takes ``x_norm_patchtokens``, i.e. last-block tokens after the final LayerNorm (the
            upsampler then applies its own ChannelNorm: ``FeatUpJBU(channel_norm=True)``). ``False`` returns raw
            block outputs and removes the final norm. Models that pool with ``fc_norm`` have an identity ``norm``.
        frozen: eval mode and ``requires_grad=False`` for the whole ViT, kept across ``.train()`` (FeatUp's
            linear-probe protocol trains on top of a frozen backbone).
        img_size: the size the positional embedding is built for (timm's ``img_size``; default: the model's, e.g.
            224, or 518 for DINOv2). Inputs of any other size use a bicubically resampled embedding.
        model_kwargs: extra ``timm.create_model`` arguments, e.g. ``dict(drop_path_rate=0.1)`` or ``dict(depth=2)``.
            ``dynamic_img_size`` and ``dynamic_img_pad`` default to True here (any input size); ``num_classes``
            is 0.
        init_cfg: mmengine init config, e.g. ``dict(type='Pretrained', checkpoint='vit.pth')`` (loaded when the
            runner calls ``init_weights()``, after any ``pretrained`` weights), with ``prefix='backbone.'`` to take
            the backbone out of an mmseg segmentor checkpoint.

    Weights (``pretrained='path'``, ``init_cfg`` and ``load_state_dict`` all accept these key formats):
        * this module's own keys: ``model.<timm key>`` (e.g. ``model.blocks.0.attn.qkv.weight``), as saved by
          ``torch.save(backbone.state_dict())``, or ``backbone.model.<timm key>`` in a segmentor checkpoint;
        * a bare timm model's keys: ``<timm key>`` (``cls_token``, ``pos_embed``, ``patch_embed.proj.weight``,
          ``blocks.0.norm1.weight``, ..., ``norm.weight``), as saved by ``torch.save(timm_model.state_dict())``, in
          timm's hub files (``.safetensors`` too), and in the original DINO / DINOv2 releases (converted by timm's
          ``checkpoint_filter_fn``: DINOv2's ``mask_token`` dropped, register tokens moved).
        A ``module.`` prefix is stripped; if some keys start with ``backbone.``, only those are used (segmentor
        and DINO ``teacher`` checkpoints). ``pos_embed`` is resampled to the model's grid and the patch
        embedding to its patch size when they differ. Keys of the parts removed here (classifier head,
        ``fc_norm``, blocks after the last of ``out_indices``, ``norm`` when ``norm=False``) are ignored.
        ``pretrained='path'`` raises if a parameter is missing from the file; ``init_cfg`` (mmengine) logs it.

    Outputs: a tuple of ``[B, embed_dim, ceil(H/p), ceil(W/p)]`` maps (patch tokens only: the class and register
    tokens, ``num_prefix_tokens`` of them, are dropped). Inputs whose size is not a multiple of the patch size
    are zero-padded at the bottom/right (timm's ``dynamic_img_pad``), so the last row/column of tokens partly
    covers padding.

    Attributes:
        out_channels (list[int]), patch_size (int), strides (list[int], the patch size per output): use
        ``strides`` for the neck's ``feature_strides``.
    """

    def __init__(self, model_name: str = 'vit_small_patch16_224.dino',
                 out_indices: Union[int, Sequence[int]] = (-1,),
                 pretrained: Union[bool, str] = False, checkpoint_key: Optional[str] = None, norm: bool = True,
                 frozen: bool = False, img_size: Union[None, int, Tuple[int, int]] = None,
                 model_kwargs: Optional[dict] = None, init_cfg=None):
        super().__init__(init_cfg=init_cfg)
        if timm is None:
            raise ImportError('TimmViT needs timm: pip install timm')
        if not isinstance(model_name, str) or not timm.is_model(model_name):
            raise ValueError(_unknown_name_message(str(model_name)))
        if not isinstance(pretrained, (bool, str)):
            raise TypeError(f'TimmViT: pretrained must be a bool or a checkpoint path, got {type(pretrained).__name__}')
        if isinstance(pretrained, str) and not os.path.isfile(pretrained):
            raise FileNotFoundError(f'TimmViT: pretrained checkpoint {pretrained!r} does not exist')
        self.model_name = model_name
        self.norm = bool(norm)
        self.frozen = bool(frozen)

        # Check the architecture on the meta device first (no memory, no download, no init cost), so that a
        # non-ViT name fails here rather than after downloading its weights. Should a model not build on the meta
        # device, the check below, after building it for real, still applies.
        probe = None
        for probe_kwargs in (dict(model_kwargs or {}), {}):
            try:
                with torch.device('meta'):
                    probe = timm.create_model(model_name, pretrained=False, **probe_kwargs)
                break
            except Exception:  # noqa: BLE001
                continue
        if probe is not None:
            self._check_architecture(probe)
            self._resolve_indices(out_indices, len(probe.blocks))  # fail before any download
            del probe

        kwargs = dict(dynamic_img_size=True, dynamic_img_pad=True)
        kwargs.update(model_kwargs or {})
        kwargs['num_classes'] = 0
        if img_size is not None:
            kwargs['img_size'] = img_size
        model = timm.create_model(model_name, pretrained=pretrained is True, **kwargs)
        self._check_architecture(model)
        self.model = model
        # mmengine's BaseModule.init_weights calls init_weights() of children that have one and are not marked
        # initialised; timm's VisionTransformer.init_weights re-initialises every weight, which would wipe the
        # pretrained weights loaded here. timm initialises the model when it builds it, so mark it as done.
        self.model.is_init = True

        self.out_indices = self._resolve_indices(out_indices, len(model.blocks))

        self.patch_size = int(model.patch_embed.patch_size[0])
        self.in_channels = int(model.patch_embed.proj.in_channels)
        self.embed_dim = int(model.embed_dim)
        self.num_prefix_tokens = int(model.num_prefix_tokens)
        self.out_channels: List[int] = [self.embed_dim] * len(self.out_indices)
        self.strides: List[int] = [self.patch_size] * len(self.out_indices)

        self.register_load_state_dict_pre_hook(TimmViT._convert_loaded_keys)
        if isinstance(pretrained, str):
            self.load_checkpoint(pretrained, checkpoint_key)
        # Remove what the outputs do not use (after loading: checkpoints hold the full model).
        model.prune_intermediate_layers(sorted(set(self.out_indices)), prune_norm=not self.norm, prune_head=True)
        if self.frozen:
            self._freeze()

    # -- construction helpers ---------------------------------------------------------------------------------
    def _resolve_indices(self, out_indices, depth: int) -> Tuple[int, ...]:
        indices = [out_indices] if isinstance(out_indices, int) else list(out_indices)
        if not indices:
            raise ValueError('TimmViT: out_indices is empty')
        absolute = []
        for i in indices:
            if not isinstance(i, int) or isinstance(i, bool) or not -depth <= i < depth:
                raise ValueError(f'TimmViT: out_indices {tuple(indices)} out of range: {self.model_name} has '
                                 f'{depth} blocks (indices {-depth}..{depth - 1}, -1 = last)')
            absolute.append(i % depth)
        return tuple(absolute)

    def _check_architecture(self, model: nn.Module) -> None:
        name = self.model_name
        if not isinstance(model, VisionTransformer):
            raise ValueError(
                f"TimmViT: {name!r} is a {type(model).__name__}, not a timm VisionTransformer. Use a ViT name "
                "(timm.list_models('vit_*')), or one of mmseg's backbones for other architectures (e.g. "
                "type='ResNetV1c', 'MixVisionTransformer').")
        pe = model.patch_embed
        ps = getattr(pe, 'patch_size', None)
        if not isinstance(pe, PatchEmbed) or ps is None or ps[0] != ps[1]:
            raise ValueError(f'TimmViT: {name!r} uses a {type(pe).__name__} patch embedding (hybrid or non-square '
                             'patches), which is not supported: use a plain ViT')

    def _freeze(self) -> None:
        self.model.eval()
        for p in self.model.parameters():
            p.requires_grad = False

    def train(self, mode: bool = True):
        super().train(mode)
        if self.frozen:
            self.model.eval()
        return self

    # -- weights ----------------------------------------------------------------------------------------------
    def _to_own_keys(self, sd: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
        """Any accepted key format (see the class docstring) -> this module's ``model.<timm key>``."""
        if not sd:
            return sd
        sd = {k[len('module.'):] if k.startswith('module.') else k: v for k, v in sd.items()}
        if any(k.startswith('backbone.') for k in sd):
            sd = {k[len('backbone.'):]: v for k, v in sd.items() if k.startswith('backbone.')}
        own = {k[len('model.'):]: v for k, v in sd.items() if k.startswith('model.')}
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
    def _convert_loaded_keys(module: 'TimmViT', state_dict, prefix, local_metadata, strict, missing_keys,
                             unexpected_keys, error_msgs) -> None:
        # load_state_dict pre-hook: runs for torch's load_state_dict and for mmengine's (init_cfg, load_from).
        keys = [k for k in state_dict if k.startswith(prefix)]
        if not keys:
            return
        converted = module._to_own_keys({k[len(prefix):]: state_dict[k] for k in keys})
        for k in keys:
            del state_dict[k]
        for k, v in converted.items():
            state_dict[prefix + k] = v

    @staticmethod
    def _read_checkpoint(path: str):
        if path.endswith('.safetensors'):
            from safetensors.torch import load_file
            return load_file(path, device='cpu')
        try:
            return torch.load(path, map_location='cpu', weights_only=True)
        except Exception as e:  # noqa: BLE001
            raise RuntimeError(
                f'TimmViT: could not read {path!r} with torch.load(weights_only=True): {e}\nIf the file holds '
                'non-tensor objects (e.g. a full training checkpoint) and you trust it, save its weights first: '
                "torch.save(torch.load(path, weights_only=False)['teacher'], 'weights.pth')") from e

    def load_checkpoint(self, path: str, checkpoint_key: Optional[str] = None) -> None:
        """Load a local checkpoint (any key format of the class docstring); raise if a parameter is missing."""
        ckpt = self._read_checkpoint(path)
        if not isinstance(ckpt, dict):
            raise ValueError(f'TimmViT: {path!r} does not hold a dict of weights (got {type(ckpt).__name__})')
        if checkpoint_key is not None:
            if checkpoint_key not in ckpt:
                raise ValueError(f'TimmViT: checkpoint_key {checkpoint_key!r} is not in {path!r}; '
                                 f'its top-level keys: {list(ckpt)[:20]}')
            ckpt = ckpt[checkpoint_key]
        else:
            for key in ('state_dict', 'model', 'teacher'):
                if isinstance(ckpt.get(key), dict):
                    ckpt = ckpt[key]
                    break
        tensors = {k: v for k, v in ckpt.items() if isinstance(v, torch.Tensor)}
        if not tensors:
            raise ValueError(f'TimmViT: no tensors found in {path!r} (checkpoint_key={checkpoint_key!r}); '
                             f'top-level keys: {list(ckpt)[:20]}')
        missing, unexpected = self.load_state_dict(tensors, strict=False)
        if missing:
            raise RuntimeError(f'TimmViT: {path!r} does not fit {self.model_name}: {len(missing)} parameters '
                               f'missing, e.g. {missing[:8]}; unexpected keys, e.g. {unexpected[:8]}')
        if unexpected:
            warnings.warn(f'TimmViT: ignored {len(unexpected)} keys of {path!r} that {self.model_name} does not '
                          f'have, e.g. {unexpected[:8]}')

    # -- forward ----------------------------------------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, ...]:
        if not isinstance(x, torch.Tensor) or x.dim() != 4 or x.shape[1] != self.in_channels:
            shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise ValueError(f'TimmViT expects a [B, {self.in_channels}, H, W] image batch, got {shape}')
        if x.shape[-2] < 1 or x.shape[-1] < 1:
            raise ValueError(f'TimmViT: empty image batch {tuple(x.shape)}')
        take = sorted(set(self.out_indices))
        # forward_intermediates: patch embed (zero-pads to a multiple of the patch), resampled pos_embed, blocks;
        # returns the chosen blocks' tokens (after the final norm if norm=True) without the prefix tokens, as NCHW.
        feats = self.model.forward_intermediates(x, indices=take, norm=self.norm, output_fmt='NCHW',
                                                 intermediates_only=True)
        by_index = dict(zip(take, feats))
        return tuple(by_index[i] for i in self.out_indices)
