"""The bare JBU stack out of a training checkpoint (framework-free: torch only).

Checkpoints of ``FeatUpJBUTrainer`` (``tools/train.py configs/*/jbu_*``) hold ``backbone.*`` (frozen, possibly
large), ``norm.*``, ``upsampler.*`` (the :class:`~featup_plugin.upsamplers.JBUStack`), ``downsampler.*``,
``scale_net.*`` and ``step``, plus mmengine's optimizer and message-hub state. FeatUpJBU and the detectron2 wrapper
load them as they are; :func:`extract_upsampler_state_dict` returns just the stack, e.g. to ship a small file
(``tools/extract_upsampler.py``).
"""
from __future__ import annotations

import re
from collections import OrderedDict
from typing import Any, Dict, Mapping, Tuple

import torch

__all__ = ['extract_upsampler_state_dict']

_STAGE = re.compile(r'^up(\d+)\.')


def extract_upsampler_state_dict(checkpoint: Mapping[str, Any], prefix: str = 'upsampler.'
                                 ) -> Tuple['OrderedDict[str, torch.Tensor]', Dict[str, Any]]:
    """``(state_dict, info)``: the ``JBUStack`` keys (``up1.*``, ..., ``fixup_proj.*``) found under ``prefix``
    in a checkpoint dict (its ``state_dict`` entry if present), as contiguous CPU copies; ``info`` has
    ``feat_dim``, ``num_stages`` and the number of tensors of each other top-level module that was left out."""
    if not isinstance(checkpoint, Mapping):
        raise TypeError(f'expected a checkpoint dict, got {type(checkpoint).__name__}')
    sd = checkpoint.get('state_dict', checkpoint)
    if not isinstance(sd, Mapping):
        raise TypeError("the checkpoint's 'state_dict' entry is not a dict")
    out: 'OrderedDict[str, torch.Tensor]' = OrderedDict()
    left: Dict[str, int] = {}
    for k, v in sd.items():
        if k.startswith(prefix) and isinstance(v, torch.Tensor):
            out[k[len(prefix):]] = v.detach().to('cpu', copy=True).contiguous()
        else:
            head = k.split('.', 1)[0]
            left[head] = left.get(head, 0) + 1
    if not out:
        heads = ', '.join(sorted(left)) or 'nothing'
        raise KeyError(f'no key starts with {prefix!r} (top-level entries: {heads}); not an upsampler-training '
                       f'checkpoint, or pass the right prefix')
    w = out.get('fixup_proj.1.weight')
    stages = sorted({int(m.group(1)) for m in map(_STAGE.match, out) if m})
    if w is None or not stages or stages != list(range(1, len(stages) + 1)):
        raise KeyError(f'the keys under {prefix!r} are not a JBUStack (need up1.* ... and fixup_proj.1.weight), '
                       f'found {sorted(out)[:6]}')
    return out, dict(feat_dim=int(w.shape[0]), num_stages=len(stages), left_out=left)
