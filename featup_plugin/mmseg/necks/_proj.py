"""The optional per-level output projection shared by FeatUpJBU and its bilinear twin (``out_channels``)."""

from __future__ import annotations

from typing import List, Optional, Sequence, Union

import torch.nn as nn
from mmcv.cnn import ConvModule


def resolve_out_channels(
    out_channels: Union[None, int, Sequence[int]], in_channels: Sequence[int], who: str
) -> Optional[List[int]]:
    """Per upsampled level: the projection width, or None when ``out_channels`` is None (no projection)."""
    if out_channels is None:
        return None
    n = len(in_channels)
    if isinstance(out_channels, (list, tuple)):
        outs = list(out_channels)
        if len(outs) != n:
            raise ValueError(
                f'{who}: out_channels has {len(outs)} entries but {n} level(s) are upsampled '
                f'(in_index); give one width per upsampled level, or one int for all'
            )
    else:
        outs = [out_channels] * n
    for c in outs:
        if isinstance(c, bool) or not isinstance(c, int) or c < 1:
            raise ValueError(f'{who}: out_channels must be a positive int (or a list of them), got {out_channels!r}')
    return outs


def build_projections(
    in_channels: Sequence[int], out_channels: Optional[Sequence[int]], conv_cfg=None, norm_cfg=None, act_cfg=None
) -> nn.ModuleList:
    """One 1×1 ``ConvModule`` per upsampled level (``in -> out`` channels, with the given norm/activation; a
    bias only without a norm), or an empty list when there is no projection."""
    if out_channels is None:
        return nn.ModuleList()
    return nn.ModuleList(
        ConvModule(c_in, c_out, 1, conv_cfg=conv_cfg, norm_cfg=norm_cfg, act_cfg=act_cfg)
        for c_in, c_out in zip(in_channels, out_channels)
    )
