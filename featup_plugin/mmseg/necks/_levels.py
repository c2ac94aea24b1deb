"""What FeatUpJBU, PacJointUpsampler and ResizeNeck share: which backbone levels they upsample (``in_channels``,
``in_index``, ``mode``), the per-level input checks, and putting the outputs back (replace or append)."""

from __future__ import annotations

from typing import List, Optional, Sequence, Tuple, Union

import torch


def parse_levels(
    in_channels: Union[int, Sequence[int]], in_index: Union[int, Sequence[int]], mode: str
) -> Tuple[List[int], List[int], Optional[list]]:
    """``(in_index, channels per upsampled level, the in_channels list or None when one int was given)``."""
    index = [in_index] if isinstance(in_index, int) else list(in_index)
    chans = list(in_channels) if isinstance(in_channels, (list, tuple)) else None
    if chans is None:
        channels = [int(in_channels)] * len(index)
    else:
        try:
            channels = [int(chans[i]) for i in index]
        except IndexError:
            raise ValueError(f'in_index {index} is out of range for in_channels {chans}') from None
    if mode not in ('replace', 'append'):
        raise ValueError(f"mode must be 'replace' or 'append', got {mode!r}")
    return index, channels, chans


def level_input(inputs: Sequence[torch.Tensor], idx: int, channels: int, who: str) -> torch.Tensor:
    """Backbone output ``idx``, checked against the configured width."""
    try:
        feat = inputs[idx]
    except IndexError:
        raise ValueError(f'{who}: in_index {idx} is out of range for {len(inputs)} backbone outputs') from None
    if feat.shape[1] != channels:
        raise ValueError(f'{who}: backbone output {idx} has {feat.shape[1]} channels, in_channels says {channels}')
    return feat


def assemble(inputs: List[torch.Tensor], outs: List[torch.Tensor], index: List[int], projs, mode: str) -> tuple:
    """The neck's output: ``outs`` (projected if ``projs``) in place of the inputs they came from, or after them."""
    if projs:
        outs = [proj(out) for proj, out in zip(projs, outs)]
    if mode == 'append':
        return tuple(inputs) + tuple(outs)
    inputs = list(inputs)
    for idx, out in zip(index, outs):
        inputs[idx] = out
    return tuple(inputs)
