"""Upsampler weights in checkpoints (framework-free: torch only).

One place knows where JBU stacks sit in the checkpoints this project reads: :func:`find_upsampler_stacks` finds
every :class:`~featup_plugin.upsamplers.JBUStack` in a state dict by its keys (a stack is the keys ``<root>.up<N>.*``
and ``<root>.fixup_proj.*`` of a root that has ``up<N>.range_temp``), whatever the root:

* ``''``: a bare stack (``up1.*``, ``fixup_proj.*``; written by ``tools/model_converters/convert_featup_checkpoint.py``
  and ``extract_upsampler.py``);
* ``'upsampler'``: the upsampler training (``FeatUpJBUTrainer``: ``backbone.*``, ``norm.*``, ``downsampler.*``,
  ``scale_net.*`` beside it) and FeatUp's own checkpoints;
* ``'upsamplers.<i>'`` / ``'neck.upsamplers.<i>'``: the mmseg neck ``FeatUpJBU`` / a segmentor holding it;
* ``'<feature>'`` / ``'upsamplers.<feature>'``: detectron2's ``FeatUpBackbone`` (its ``upsamplers`` ModuleDict).

:func:`assign_upsampler_stacks` gives each upsampler of a model (by its ModuleList index / ModuleDict key) its
stack; :func:`load_stacks` reads, assigns, trims, checks and loads them: the mmseg neck ``FeatUpJBU`` and the
detectron2 ``FeatUpBackbone`` both load their weights with it. :func:`extract_upsampler_state_dict` gives the
bare stack of a training checkpoint (``tools/model_converters/extract_upsampler.py``).
"""

from __future__ import annotations

import os
import re
from collections import OrderedDict
from typing import Any, Callable, Dict, Mapping, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn

from .io import read_state_dict

__all__ = [
    'extract_upsampler_state_dict',
    'find_upsampler_stacks',
    'assign_upsampler_stacks',
    'trim_stages',
    'load_stacks',
    'UpsamplerWeightsError',
    'UpsamplerMismatchError',
]

_STAGE = re.compile(r'^up(\d+)$')
BARE_ROOTS = ('', 'upsampler')  # a single stack with one of these roots loads into a model with one upsampler

StackDict = 'OrderedDict[str, torch.Tensor]'


class UpsamplerWeightsError(KeyError, ValueError):
    """Checkpoint keys that hold no (fitting) upsampler: both a ``KeyError`` and a ``ValueError``."""

    def __str__(self) -> str:  # KeyError would show the repr of the message
        return str(self.args[0]) if self.args else ''


class UpsamplerMismatchError(UpsamplerWeightsError, RuntimeError):
    """A stack that does not fit the model's upsampler (missing, unexpected or mis-shaped tensors); also a
    ``RuntimeError``."""


def unwrap_state_dict(checkpoint: Any) -> Mapping[str, Any]:
    """The ``state_dict`` (mmengine, Lightning) or ``model`` (detectron2) entry of a checkpoint, else itself."""
    if not isinstance(checkpoint, Mapping):
        raise TypeError(f'expected a checkpoint dict, got {type(checkpoint).__name__}')
    for key in ('state_dict', 'model'):
        if isinstance(checkpoint.get(key), Mapping):
            return checkpoint[key]
    return checkpoint


def _root(key: str) -> Tuple[Optional[str], bool]:
    """``(root, is_stage)``: the key path before its first ``up<N>`` / ``fixup_proj`` component (None if none)."""
    parts = key.split('.')
    for i, p in enumerate(parts[:-1]):
        if p == 'fixup_proj' or _STAGE.match(p):
            return '.'.join(parts[:i]), p != 'fixup_proj'
    return None, False


def find_upsampler_stacks(
    state: Mapping[str, Any], prefix: str = '', where: str = 'the state dict'
) -> 'OrderedDict[str, StackDict]':
    """``{root: stack state dict}`` of every JBUStack in ``state`` (unwrapped as :func:`unwrap_state_dict`),
    in key order. ``prefix``: only keys starting with it, stripped (an error if there are none)."""
    state = unwrap_state_dict(state)
    if prefix:
        state = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
        if not state:
            raise UpsamplerWeightsError(f'no key of {where} starts with prefix {prefix!r}')
    stacks: 'OrderedDict[str, StackDict]' = OrderedDict()
    real = set()
    for k, v in state.items():
        root, is_stage = _root(k)
        if root is None or not isinstance(v, torch.Tensor):
            continue
        stacks.setdefault(root, OrderedDict())[k[len(root) + 1 :] if root else k] = v
        if is_stage and k.endswith('.range_temp'):
            real.add(root)
    return OrderedDict((r, s) for r, s in stacks.items() if r in real)


def assign_upsampler_stacks(
    state: Mapping[str, Any], names: Sequence[str], prefix: str = '', who: str = 'model', where: str = 'the state dict'
) -> Dict[str, Tuple[str, StackDict]]:
    """``{name: (root, stack state dict)}`` for the upsamplers ``names`` of a model (ModuleList indices
    ``'0', '1', ...`` or ModuleDict keys): the stack whose root is the name or ends with ``.<name>``
    (``upsamplers.0``, ``neck.upsamplers.0``, ``res5``, ``backbone.upsamplers.res5``), or, for a model with one
    upsampler, a single stack with root ``''`` or ``'upsampler'``. Raises :class:`UpsamplerWeightsError` naming
    what the checkpoint holds otherwise."""
    names = [str(n) for n in names]
    stacks = find_upsampler_stacks(state, prefix, where)
    keys = list(unwrap_state_dict(state))
    if not stacks:
        raise UpsamplerWeightsError(
            f'{who}: {where} holds no upsampler weights with prefix {prefix!r} (expected JBUStack keys: a bare '
            f'up1.*, upsampler.up1.*, upsamplers.<i>.up1.*, neck.upsamplers.<i>.up1.* or <feature>.up1.*); '
            f'first keys: {keys[:5]}'
        )
    found = {n: [r for r in stacks if r == n or r.endswith('.' + n)] for n in names}
    if any(found.values()):
        for n, roots in found.items():
            if not roots:
                raise UpsamplerWeightsError(
                    f'{who}: {where} has no weights for the upsampler of {n!r} (stacks found: {list(stacks)})'
                )
            if len(roots) > 1:
                raise UpsamplerWeightsError(
                    f'{who}: {where} has several stacks for the upsampler of {n!r} '
                    f'({roots}): pass the prefix of the right one'
                )
        return {n: (found[n][0], stacks[found[n][0]]) for n in names}
    bare = [r for r in stacks if r in BARE_ROOTS]
    if len(stacks) == 1 and bare:
        if len(names) != 1:
            raise UpsamplerWeightsError(
                f'{who}: {where} holds one bare JBUStack but {who} upsamples {len(names)} features ({names}): '
                'save one stack per upsampler with keys "<name>.up1..." / "upsamplers.<i>.up1..."'
            )
        return {names[0]: (bare[0], stacks[bare[0]])}
    hint = next(iter(stacks))
    raise UpsamplerWeightsError(
        f'{who}: {where} does not hold JBUStack weights for {names} with prefix {prefix!r}: it has stacks under '
        f'{[r + "." for r in stacks]}; set the prefix to {hint + "."!r}'
    )


def trim_stages(stack: Mapping[str, torch.Tensor], num_stages: int) -> Tuple[StackDict, list]:
    """``(stack, dropped)``: a stack state dict without its stages ``up<N>`` beyond ``num_stages`` (a model that
    upsamples less, e.g. FeatUp's x16 stack used for x4, uses the first stages and the fixup), and the sorted
    names of the dropped stages."""
    kept: StackDict = OrderedDict()
    dropped = set()
    for k, v in stack.items():
        m = _STAGE.match(k.split('.', 1)[0])
        if m and int(m.group(1)) > num_stages:
            dropped.add(m.group(0))
        else:
            kept[k] = v
    return kept, sorted(dropped, key=lambda s: int(s[2:]))


def extract_upsampler_state_dict(
    checkpoint: Mapping[str, Any], prefix: str = 'upsampler.'
) -> Tuple['OrderedDict[str, torch.Tensor]', Dict[str, Any]]:
    """``(state_dict, info)``: the ``JBUStack`` keys (``up1.*``, ..., ``fixup_proj.*``) found under ``prefix``
    in a checkpoint dict (its ``state_dict`` entry if present), as contiguous CPU copies; ``info`` has
    ``feat_dim``, ``num_stages`` and the number of tensors of each other top-level module that was left out."""
    if (
        isinstance(checkpoint, Mapping)
        and 'state_dict' in checkpoint
        and not isinstance(checkpoint['state_dict'], Mapping)
    ):
        raise TypeError("the checkpoint's 'state_dict' entry is not a dict")
    sd = unwrap_state_dict(checkpoint)
    left: Dict[str, int] = {}
    for k in sd:
        if not k.startswith(prefix):
            left[k.split('.', 1)[0]] = left.get(k.split('.', 1)[0], 0) + 1
    if not any(k.startswith(prefix) for k in sd):
        heads = ', '.join(sorted(left)) or 'nothing'
        raise KeyError(
            f'no key starts with {prefix!r} (top-level entries: {heads}); not an upsampler-training '
            f'checkpoint, or pass the right prefix'
        )
    stack = find_upsampler_stacks(sd, prefix).get('', {})
    stages = sorted({int(m.group(1)) for m in (_STAGE.match(k.split('.')[0]) for k in stack) if m})
    w = stack.get('fixup_proj.1.weight')
    if w is None or stages != list(range(1, len(stages) + 1)) or not stages:
        found = sorted(k[len(prefix) :] for k in sd if k.startswith(prefix))
        raise KeyError(
            f'the keys under {prefix!r} are not a JBUStack (need up1.* ... and fixup_proj.1.weight), found {found[:6]}'
        )
    out = OrderedDict((k, v.detach().to('cpu', copy=True).contiguous()) for k, v in stack.items())
    return out, dict(feat_dim=int(w.shape[0]), num_stages=len(stages), left_out=left)


def load_stacks(
    upsamplers: Mapping[str, nn.Module],
    source: Union[str, Mapping[str, Any]],
    prefix: str = '',
    *,
    norms: Optional[Mapping[str, nn.Module]] = None,
    who: str = 'model',
    where: Optional[str] = None,
    log: Optional[Callable[[str], None]] = None,
    trust: bool = False,
) -> Dict[str, str]:
    """Load JBU stacks into a model's upsamplers; returns ``{name: root of the stack used}``.

    Args:
        upsamplers: the model's ``JBUStack`` s by name (ModuleList indices ``'0', '1', ...`` or ModuleDict keys);
            in messages they are ``upsamplers.<name>``.
        source: a checkpoint file (read by :func:`~featup_plugin.checkpoint.io.read_state_dict`) or a state dict
            (a ``state_dict`` / ``model`` entry is unwrapped). The stacks are found by
            :func:`assign_upsampler_stacks` (``prefix`` first selects and strips keys).
        norms: the model's channel norms by the same names: ``norms.<name>.*`` beside a stack saved under
            ``...upsamplers.<name>`` loads into them (optional: FeatUp never trains them).
        who, where: the model and the source, for messages (``where`` defaults to the path).
        log: called with a line when a stack has stages beyond those built (they are dropped, see
            :func:`trim_stages`).

    Raises:
        UpsamplerWeightsError: no (unique) stack for an upsampler. UpsamplerMismatchError (also a ``KeyError``,
        ``ValueError`` and ``RuntimeError``): missing, unexpected or mis-shaped tensors. Nothing is loaded then.
    """
    where = where or (str(source) if isinstance(source, (str, os.PathLike)) else 'the given state dict')
    state = read_state_dict(source, trust=trust, where=where)
    names = [str(n) for n in upsamplers]
    stacks = assign_upsampler_stacks(state, names, prefix, who=who, where=where)
    state = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)} if prefix else state
    plan = []
    for name in names:
        module, (root, stack) = upsamplers[name], stacks[name]
        built = getattr(module, 'num_stages', None)
        if built is not None:
            stack, dropped = trim_stages(stack, built)
            if dropped and log is not None:
                log(
                    f'{who}: {where} has stages {dropped} beyond the {built} that upsampler {name!r} builds; they '
                    'are not used'
                )
        desc = f'upsampler {name!r} (JBUStack({getattr(module, "feat_dim", "?")}, num_stages={built}))'
        _check_fit(module, stack, f'upsamplers.{name}', who, where, desc, require_all=True)
        plan.append((module, stack))
        own_root = f'upsamplers.{name}'
        if norms is not None and name in norms and (root == own_root or root.endswith('.' + own_root)):
            head = root[: -len(own_root)] + f'norms.{name}.'
            norm_sd = OrderedDict((k[len(head) :], v) for k, v in state.items() if k.startswith(head))
            if norm_sd:
                _check_fit(
                    norms[name], norm_sd, f'norms.{name}', who, where, f'channel norm {name!r}', require_all=False
                )
                plan.append((norms[name], norm_sd))
    for module, sd in plan:
        module.load_state_dict(sd, strict=False)
    return {name: stacks[name][0] for name in names}


def _check_fit(
    module: nn.Module, sd: Mapping[str, torch.Tensor], label: str, who: str, where: str, desc: str, require_all: bool
) -> None:
    own = module.state_dict()
    missing = [f'{label}.{k}' for k in own if k not in sd] if require_all else []
    unexpected = [f'{label}.{k}' for k in sd if k not in own]
    if missing or unexpected:
        raise UpsamplerMismatchError(
            f'{who}: {where} does not fit {desc} (radius, key_dim, number of stages, channels?): missing '
            f'{missing[:6]}{"..." if len(missing) > 6 else ""}, unexpected {unexpected[:6]}'
            f'{"..." if len(unexpected) > 6 else ""}'
        )
    bad = [
        f'{label}.{k} has shape {tuple(v.shape)}, the model expects {tuple(own[k].shape)}'
        for k, v in sd.items()
        if tuple(v.shape) != tuple(own[k].shape)
    ]
    if bad:
        raise UpsamplerMismatchError(f'{who}: {where} does not fit {desc}: {"; ".join(bad[:5])}')
