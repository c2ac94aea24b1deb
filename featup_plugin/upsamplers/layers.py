"""Small layers shared by the upsamplers. Details: docs/jbu.md#channelnorm"""

from __future__ import annotations

import torch
import torch.nn as nn


class ChannelNorm(nn.Module):
    """LayerNorm over the channel axis of an ``[B, C, H, W]`` map (FeatUp's ``ChannelNorm``).

    The affine parameters live in ``self.norm`` (an ``nn.LayerNorm``), as in FeatUp, so its state dicts load.
    """

    def __init__(self, num_channels: int, eps: float = 1e-5, elementwise_affine: bool = True):
        super().__init__()
        self.norm = nn.LayerNorm(num_channels, eps=eps, elementwise_affine=elementwise_affine)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or x.shape[1] != self.norm.normalized_shape[0]:
            raise ValueError(
                f'ChannelNorm({self.norm.normalized_shape[0]}) expects [B, '
                f'{self.norm.normalized_shape[0]}, H, W], got {tuple(x.shape)}'
            )
        return self.norm(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
