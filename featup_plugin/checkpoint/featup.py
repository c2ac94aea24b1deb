"""Convert FeatUp's official JBU checkpoints into state dicts for :class:`featup_plugin.upsamplers.JBUStack`.

Framework-free (only PyTorch and the reader of :mod:`featup_plugin.checkpoint.io`). The command
line front end is ``tools/model_converters/convert_featup_checkpoint.py IN OUT [--prefix P] [--check] [--trust]``.

The official checkpoints are ``vit`` (timm's supervised AugReg ViT-S/16, ``vit_small_patch16_224`` in timm
0.4.12: not DINO), ``dino16`` (DINO ViT-S/16), ``dinov2`` (DINOv2 ViT-S/14), ``clip`` (CLIP ViT-B/16 tokens
through the visual projection), ``maskclip`` (MaskCLIP on CLIP ViT-B/16) and ``resnet50`` (ResNet-50
``layer4``); each upsampler only fits its own featurizer, which
:class:`featup_plugin.featurizers.FeatUpFeaturizer` rebuilds and ``featup_plugin.hub.load`` pairs with it
(converting the file on load). Their backbones and feat_dim, the Lightning layout, the JBUStack keys and shapes
are described in ``docs/checkpoints.md`` (the featurizers in ``docs/hub.md``). Files are read by
:func:`featup_plugin.checkpoint.io.read_checkpoint` (tensors-only unless ``trust``).
"""

from __future__ import annotations

import re
from collections import OrderedDict
from typing import Any, Dict, List, Mapping, Optional, Tuple

import torch

from .io import CheckpointError, NotACheckpointError, UntrustedCheckpointError, read_checkpoint

__all__ = [
    'FeatUpCheckpointError',
    'NotACheckpointError',
    'UntrustedCheckpointError',
    'OFFICIAL_FEAT_DIMS',
    'official_jbu_stack_shapes',
    'convert_featup_state_dict',
    'read_checkpoint',
    'load_featup_checkpoint',
    'guess_backbone',
]

#: feat_dim of each official ``{name}_jbu_stack_cocostuff.ckpt`` (FeatUp's ``get_featurizer`` / ``hubconf.py``); the
#: widths of :data:`featup_plugin.featurizers.FEATUP_FEATURIZERS` come from here.
OFFICIAL_FEAT_DIMS: Dict[str, int] = {
    'vit': 384,
    'dino16': 384,
    'dinov2': 384,
    'clip': 512,
    'maskclip': 512,
    'resnet50': 2048,
}

#: Top-level sub-modules of FeatUp's Lightning module that the conversion drops.
DROPPED_PREFIXES: Tuple[str, ...] = ('downsampler.', 'scale_net.', 'model.')

_CHANNEL_NORM_KEYS = ('model.1.norm.weight', 'model.1.norm.bias')
_STAGE_RE = re.compile(r'^up(\d+)\.')

# FeatUp's JBULearnedRange(3, feat_dim, 32, radius=3): fixed whatever the backbone.
_GUIDANCE_DIM, _KEY_DIM, _TAPS = 3, 32, 49


#: Raised when the input is not a FeatUp JBU-stack checkpoint this converter understands (the message says why).
#: The same class as :class:`~featup_plugin.checkpoint.io.CheckpointError`, so it also covers the reader's
#: :class:`NotACheckpointError` and :class:`UntrustedCheckpointError`.
FeatUpCheckpointError = CheckpointError


def official_jbu_stack_shapes(feat_dim: int, num_stages: int = 4) -> 'OrderedDict[str, Tuple[int, ...]]':
    """Keys (without ``upsampler.``) and shapes of FeatUp's ``JBUStack(feat_dim)``, in registration order."""
    shapes: 'OrderedDict[str, Tuple[int, ...]]' = OrderedDict()
    for i in range(1, num_stages + 1):
        p = f'up{i}.'
        shapes[p + 'range_temp'] = ()
        shapes[p + 'sigma_spatial'] = ()  # state_dict order: the module's own parameters, then its children's
        shapes[p + 'range_proj.0.weight'] = (_KEY_DIM, _GUIDANCE_DIM, 1, 1)
        shapes[p + 'range_proj.0.bias'] = (_KEY_DIM,)
        shapes[p + 'range_proj.3.weight'] = (_KEY_DIM, _KEY_DIM, 1, 1)
        shapes[p + 'range_proj.3.bias'] = (_KEY_DIM,)
        shapes[p + 'fixup_proj.0.weight'] = (_TAPS, _TAPS + _GUIDANCE_DIM, 1, 1)
        shapes[p + 'fixup_proj.0.bias'] = (_TAPS,)
        shapes[p + 'fixup_proj.3.weight'] = (_TAPS, _TAPS, 1, 1)
        shapes[p + 'fixup_proj.3.bias'] = (_TAPS,)
    shapes['fixup_proj.1.weight'] = (feat_dim, feat_dim, 1, 1)
    shapes['fixup_proj.1.bias'] = (feat_dim,)
    return shapes


def guess_backbone(feat_dim: int) -> List[str]:
    """Official checkpoint names with this ``feat_dim``."""
    return [name for name, dim in OFFICIAL_FEAT_DIMS.items() if dim == feat_dim]


def _summarise(keys, limit: int = 12) -> str:
    keys = sorted(keys)
    text = ', '.join(keys[:limit])
    return text + (f', ... ({len(keys) - limit} more)' if len(keys) > limit else '')


def _groups(keys) -> str:
    counts: Dict[str, int] = {}
    for k in keys:
        head = k.split('.', 1)[0] if '.' in k else k
        counts[head] = counts.get(head, 0) + 1
    return ', '.join(f'{h}.* ({n})' for h, n in sorted(counts.items())) or 'nothing'


def _state_dict_of(obj: Any) -> Mapping[str, Any]:
    """The state dict inside a loaded checkpoint object (Lightning dict, plain state dict or module)."""
    if isinstance(obj, torch.nn.Module):
        return obj.state_dict()
    if not isinstance(obj, Mapping):
        raise FeatUpCheckpointError(f'expected a checkpoint dict, got {type(obj).__name__}')
    inner = obj.get('state_dict')
    if isinstance(inner, Mapping):
        return inner
    if any(isinstance(v, torch.Tensor) for v in obj.values()):
        return obj
    raise FeatUpCheckpointError(
        f"the checkpoint has no 'state_dict' entry and holds no tensors (entries: {_summarise(map(str, obj))})"
    )


def convert_featup_state_dict(
    sd: Mapping[str, Any],
    *,
    src_prefix: str = 'upsampler.',
    prefix: str = '',
    num_stages: Optional[int] = 4,
    allow_unknown: bool = False,
) -> Tuple['OrderedDict[str, torch.Tensor]', Dict[str, Any]]:
    """Convert a FeatUp JBU-stack state dict into one for ``JBUStack(feat_dim, num_stages)``.

    Args:
        sd: FeatUp's state dict, or a whole loaded Lightning checkpoint (its ``state_dict`` entry is used).
        src_prefix: where the stack lives in ``sd`` (FeatUp's Lightning module and hub model: ``'upsampler.'``;
            ``''`` for a bare ``JBUStack.state_dict()``).
        prefix: prepended to every output key, e.g. ``'upsamplers.0.'`` for the mmseg ``FeatUpJBU`` neck.
        num_stages: the stages expected (FeatUp: 4, ``up1``..``up4``); None accepts any contiguous count.
        allow_unknown: drop (and report) top-level keys outside ``src_prefix`` that are not FeatUp's known
            training-only modules, instead of raising.

    Returns:
        ``(state_dict, info)``: the tensors (detached copies, FeatUp's order) and a dict with ``feat_dim``,
        ``num_stages``, ``num_params``, ``dropped`` (``{top-level name: number of tensors}``), ``unknown_dropped``
        (keys), ``channel_norm`` (FeatUp's ChannelNorm affine tensors as ``{'norm.weight', 'norm.bias'}``, or
        None) and ``backbones`` (official checkpoints with this feat_dim).

    Raises:
        FeatUpCheckpointError: no stack under ``src_prefix``, missing/unknown keys, unexpected shapes, the wrong
            number of stages, non-finite values, or unknown keys outside the stack (unless ``allow_unknown``).
    """
    sd = _state_dict_of(sd)
    keys = [str(k) for k in sd.keys()]
    # Sort keys into the stack, FeatUp's training-only modules (dropped) and anything else (unknown).
    ours: Dict[str, Any] = {}
    dropped: Dict[str, int] = {}
    unknown = []
    for k in keys:
        if src_prefix and k.startswith(src_prefix):
            ours[k[len(src_prefix) :]] = sd[k]
        elif k.startswith(DROPPED_PREFIXES):
            head = k.split('.', 1)[0]
            dropped[head] = dropped.get(head, 0) + 1
        elif not src_prefix:
            ours[k] = sd[k]
        else:
            unknown.append(k)
    if not ours:
        hint = ''
        if src_prefix and any(k.startswith('up1.') for k in keys):
            hint = " The keys look like a bare JBUStack state dict: convert it with src_prefix='' (--src-prefix '')."
        raise FeatUpCheckpointError(
            f"no '{src_prefix}' keys: this is not a FeatUp JBU-stack checkpoint (found {_groups(keys)}).{hint}"
        )
    bad = [k for k, v in ours.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise FeatUpCheckpointError(f'non-tensor entries under {src_prefix!r}: {_summarise(bad)}')

    if unknown and not allow_unknown:
        raise FeatUpCheckpointError(
            f"unknown keys outside '{src_prefix}' (FeatUp's checkpoints hold only upsampler, downsampler, "
            f'scale_net and model): {_summarise(unknown)}; pass allow_unknown=True (--allow-unknown) to drop them'
        )

    # feat_dim from the final fixup conv, stages from the upN names.
    w = ours.get('fixup_proj.1.weight')
    if w is None:
        raise FeatUpCheckpointError(
            f"'{src_prefix}fixup_proj.1.weight' is missing, so feat_dim cannot be read: not FeatUp's JBUStack "
            f"(found {_groups(ours)} under '{src_prefix}')"
        )
    if w.dim() != 4 or w.shape[0] != w.shape[1] or tuple(w.shape[2:]) != (1, 1):
        raise FeatUpCheckpointError(
            f"'{src_prefix}fixup_proj.1.weight' has shape {list(w.shape)}, expected [C, C, 1, 1] (FeatUp's final "
            f'1x1 fixup conv)'
        )
    feat_dim = int(w.shape[0])
    found = sorted({int(m.group(1)) for m in map(_STAGE_RE.match, ours) if m})
    expected_stages = list(range(1, (num_stages if num_stages is not None else len(found)) + 1))
    if found != expected_stages:
        want = f'{num_stages} stages' if num_stages is not None else 'contiguous stages'
        got = ', '.join(f'up{i}' for i in found) or 'none'
        raise FeatUpCheckpointError(
            f"wrong number of JBU stages under '{src_prefix}': expected {want} "
            f"({', '.join(f'up{i}' for i in expected_stages) or 'none'}, FeatUp's JBUStack has up1..up4), found {got}"
        )
    n = len(expected_stages)

    shapes = official_jbu_stack_shapes(feat_dim, n)
    missing = [k for k in shapes if k not in ours]
    extra = [k for k in ours if k not in shapes]
    if missing or extra:
        parts = []
        if missing:
            parts.append(f'missing {_summarise(src_prefix + k for k in missing)}')
        if extra:
            parts.append(f'unknown {_summarise(src_prefix + k for k in extra)}')
        raise FeatUpCheckpointError(
            f"the stack under '{src_prefix}' does not have FeatUp's JBUStack layout: {'; '.join(parts)}"
        )
    wrong = [
        f'{src_prefix}{k}: {list(ours[k].shape)} (expected {list(s)})'
        for k, s in shapes.items()
        if tuple(ours[k].shape) != s
    ]
    if wrong:
        raise FeatUpCheckpointError(
            f'unexpected shapes (FeatUp JBUStack({feat_dim}): radius 3, key_dim 32, RGB guidance): '
            + '; '.join(wrong[:12])
            + (f'; ... ({len(wrong) - 12} more)' if len(wrong) > 12 else '')
        )
    not_float = [src_prefix + k for k in shapes if not ours[k].is_floating_point()]
    if not_float:
        raise FeatUpCheckpointError(f'non-floating-point tensors: {_summarise(not_float)}')
    nonfinite = [src_prefix + k for k in shapes if not bool(torch.isfinite(ours[k]).all())]
    if nonfinite:
        raise FeatUpCheckpointError(f'non-finite values (NaN/inf) in {_summarise(nonfinite)}')

    # Identity mapping (our JBUStack uses FeatUp's names); copies so the output does not share storage with
    # (and, when saved, drag along) the whole checkpoint.
    out: 'OrderedDict[str, torch.Tensor]' = OrderedDict(
        (prefix + k, ours[k].detach().to('cpu', copy=True).contiguous()) for k in shapes
    )

    channel_norm = None
    if src_prefix == 'upsampler.' and all(k in sd for k in _CHANNEL_NORM_KEYS):
        cw, cb = (sd[k] for k in _CHANNEL_NORM_KEYS)
        if (
            isinstance(cw, torch.Tensor)
            and isinstance(cb, torch.Tensor)
            and tuple(cw.shape) == tuple(cb.shape) == (feat_dim,)
        ):
            channel_norm = OrderedDict([('norm.weight', cw.detach().clone()), ('norm.bias', cb.detach().clone())])
    info: Dict[str, Any] = {
        'feat_dim': feat_dim,
        'num_stages': n,
        'num_params': int(sum(t.numel() for t in out.values())),
        'dropped': dropped,
        'unknown_dropped': sorted(unknown),
        'channel_norm': channel_norm,
        'backbones': guess_backbone(feat_dim),
        'dtype': str(w.dtype).replace('torch.', ''),
    }
    return out, info


def load_featup_checkpoint(path: str, *, trust: bool = False, **convert_kwargs) -> 'OrderedDict[str, torch.Tensor]':
    """Read an official ``*_jbu_stack_cocostuff.ckpt`` and return the state dict for ``JBUStack(feat_dim)``.

    ``convert_kwargs`` go to :func:`convert_featup_state_dict` (``prefix``, ``src_prefix``, ``num_stages``,
    ``allow_unknown``). Example::

        sd = load_featup_checkpoint('dinov2_jbu_stack_cocostuff.ckpt')
        stack = JBUStack(sd['fixup_proj.1.weight'].shape[0])
        stack.load_state_dict(sd)
        hr = stack.eval()(channel_norm(lr_feats), image)  # == FeatUp's upsampler(lr_feats, image)
    """
    state_dict, _ = convert_featup_state_dict(read_checkpoint(path, trust=trust, mmap=True), **convert_kwargs)
    return state_dict
