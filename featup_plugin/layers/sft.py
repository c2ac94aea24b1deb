"""Spatial feature transform (SFT; Wang et al., CVPR 2018) layers, plain ``torch.nn`` (no framework import):
:class:`SFTLayer` (``out = x * (1 + gamma) + beta`` from a condition map, the identity at initialisation), SFTGAN's
:class:`ResBlockSFT`, and :class:`SFTConditionNet` (guidance -> one condition map per scale).

Derivation / details: docs/sft.md#sft-layers
"""

from __future__ import annotations

from typing import Callable, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ['SFTLayer', 'ResBlockSFT', 'SFTConditionNet', 'sobel_magnitude', 'resize_condition', 'CONDITION_SIGNALS']

Size = Tuple[int, int]
CONDITION_SIGNALS = ('raw', 'edges', 'raw+edges')


def _positive_int(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f'{name} must be a positive int, got {value!r}')
    return value


def _check_map(who: str, x: torch.Tensor, channels: int, what: str) -> None:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f'{who}: {what} must be a torch.Tensor, got {type(x).__name__}')
    if x.dim() != 4 or x.shape[1] != channels:
        raise ValueError(f'{who}: {what} must be [B, {channels}, H, W], got {tuple(x.shape)}')


def sobel_magnitude(x: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Per-channel Sobel gradient magnitude ``sqrt(gx^2 + gy^2 + eps)`` of ``[B, C, H, W]`` (replicate padding),
    same shape as ``x``."""
    if not isinstance(x, torch.Tensor) or x.dim() != 4:
        raise ValueError(
            f'sobel_magnitude expects a [B, C, H, W] tensor, got '
            f'{tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__}'
        )
    c = x.shape[1]
    kx = x.new_tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]]) / 8
    k = torch.stack([kx, kx.t()]).unsqueeze(1).repeat(c, 1, 1, 1)  # [2C, 1, 3, 3]: (gx, gy) per channel
    g = F.conv2d(F.pad(x, (1, 1, 1, 1), mode='replicate'), k, groups=c)
    g = g.view(x.shape[0], c, 2, *x.shape[-2:])
    return torch.sqrt(g.pow(2).sum(2) + eps)


def resize_condition(x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """``x`` at ``size``: area average (``adaptive_avg_pool2d``, as FeatUp pools its guidance) when no side grows,
    bilinear (``align_corners=False``) otherwise."""
    size = (int(size[0]), int(size[1]))
    if tuple(x.shape[-2:]) == size:
        return x
    if size[0] <= x.shape[-2] and size[1] <= x.shape[-1]:
        return F.adaptive_avg_pool2d(x, size)
    return F.interpolate(x, size=size, mode='bilinear', align_corners=False)


class SFTLayer(nn.Module):
    """``out = x * (1 + gamma(c)) + beta(c)``, with ``gamma``/``beta`` = 1x1 conv -> LeakyReLU -> 1x1 conv of
    the condition ``c`` (separate branches, as SFTGAN). The second convolution of each branch is zero-initialised,
    so the layer starts as the identity.

    Args:
        feat_channels: channels of ``x`` (and of ``gamma``, ``beta``).
        cond_channels: channels of the condition.
        hidden_channels: width of each branch's hidden layer (default: ``cond_channels``).
        negative_slope: LeakyReLU slope in the branches (SFTGAN: 0.1).
    """

    def __init__(
        self, feat_channels: int, cond_channels: int, hidden_channels: Optional[int] = None, negative_slope: float = 0.1
    ):
        super().__init__()
        self.feat_channels = _positive_int('feat_channels', feat_channels)
        self.cond_channels = _positive_int('cond_channels', cond_channels)
        hidden = cond_channels if hidden_channels is None else _positive_int('hidden_channels', hidden_channels)
        self.hidden_channels = hidden

        def branch() -> nn.Sequential:
            return nn.Sequential(
                nn.Conv2d(cond_channels, hidden, 1),
                nn.LeakyReLU(negative_slope, inplace=True),
                nn.Conv2d(hidden, feat_channels, 1),
            )

        self.scale = branch()
        self.shift = branch()
        self.reset_output()

    def reset_output(self) -> None:
        """Zero the last convolution of both branches: the layer becomes the identity."""
        for branch in (self.scale, self.shift):
            nn.init.zeros_(branch[-1].weight)
            nn.init.zeros_(branch[-1].bias)

    def modulation(self, cond: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """``(gamma, beta)``, each ``[B, feat_channels, H, W]``."""
        _check_map('SFTLayer', cond, self.cond_channels, 'the condition')
        return self.scale(cond), self.shift(cond)

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        _check_map('SFTLayer', x, self.feat_channels, 'the features')
        _check_map('SFTLayer', cond, self.cond_channels, 'the condition')
        if x.shape[0] != cond.shape[0] or x.shape[-2:] != cond.shape[-2:]:
            raise ValueError(
                f'SFTLayer: the condition {tuple(cond.shape)} must have the batch size and spatial '
                f'size of the features {tuple(x.shape)} (resize it with resize_condition)'
            )
        gamma, beta = self.modulation(cond)
        return x * (1 + gamma) + beta


class ResBlockSFT(nn.Module):
    """SFTGAN's residual block, an SFT layer before each of its two 3x3 convolutions::

        y = act(norm1(conv1(sft1(x, c))))
        y = norm2(conv2(sft2(y, c)))
        out = x + y

    Args:
        channels: feature channels (input = output).
        cond_channels, hidden_channels: of the two :class:`SFTLayer` s.
        norm_layer: optional ``callable(channels) -> nn.Module`` after each 3x3 convolution (e.g.
            ``nn.BatchNorm2d``); None: no normalisation, convolutions with bias.
        act_layer: activation module class (default ``nn.ReLU``, SFTGAN's block).
        zero_init_last: zero the last normalisation's weight (or the last convolution if there is no norm) so
            the whole block starts as the identity (off by default: only the SFT layers start as identity).
    """

    def __init__(
        self,
        channels: int,
        cond_channels: int,
        hidden_channels: Optional[int] = None,
        norm_layer: Optional[Callable[[int], nn.Module]] = None,
        act_layer: Callable[[], nn.Module] = nn.ReLU,
        zero_init_last: bool = False,
    ):
        super().__init__()
        channels = _positive_int('channels', channels)
        self.channels = channels
        self.sft1 = SFTLayer(channels, cond_channels, hidden_channels)
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1, bias=norm_layer is None)
        self.norm1 = norm_layer(channels) if norm_layer is not None else nn.Identity()
        self.act = act_layer()
        self.sft2 = SFTLayer(channels, cond_channels, hidden_channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=norm_layer is None)
        self.norm2 = norm_layer(channels) if norm_layer is not None else nn.Identity()
        if zero_init_last:
            last = self.norm2 if getattr(self.norm2, 'weight', None) is not None else self.conv2
            nn.init.zeros_(last.weight)
            if getattr(last, 'bias', None) is not None:
                nn.init.zeros_(last.bias)

    def sft_layers(self) -> List[SFTLayer]:
        return [self.sft1, self.sft2]

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        y = self.act(self.norm1(self.conv1(self.sft1(x, cond))))
        y = self.norm2(self.conv2(self.sft2(y, cond)))
        return x + y


class SFTConditionNet(nn.Module):
    """Guidance -> one condition map per requested size (shared by all SFT layers at that size):
    ``forward(guidance, sizes)``. The guidance (a map, or a list/tuple of maps of any sizes with
    ``sum(C_i) == in_channels``) is resized to each size, turned into ``signal`` and fed to a trunk shared by all
    scales, then a per-scale 1x1 convolution. Details: docs/sft.md#sftconditionnet

    Args:
        in_channels: guidance channels (3 for an RGB image; the sum over the maps for a list of maps).
        cond_channels: channels of each condition (SFTGAN: 32).
        hidden_channels: trunk width (default ``cond_channels``).
        num_scales: number of sizes ``forward`` is called with (one output convolution each).
        num_convs: 3x3 convolutions in the trunk (>= 1).
        signal: ``'raw'`` (the resized guidance), ``'edges'`` (its per-channel Sobel magnitude at that size) or
            ``'raw+edges'`` (both).
        negative_slope: LeakyReLU slope.
    """

    def __init__(
        self,
        in_channels: int,
        cond_channels: int = 32,
        hidden_channels: Optional[int] = None,
        num_scales: int = 1,
        num_convs: int = 2,
        signal: str = 'raw',
        negative_slope: float = 0.1,
    ):
        super().__init__()
        self.in_channels = _positive_int('in_channels', in_channels)
        self.cond_channels = _positive_int('cond_channels', cond_channels)
        hidden = cond_channels if hidden_channels is None else _positive_int('hidden_channels', hidden_channels)
        self.num_scales = _positive_int('num_scales', num_scales)
        _positive_int('num_convs', num_convs)
        if signal not in CONDITION_SIGNALS:
            raise ValueError(f'signal must be one of {CONDITION_SIGNALS}, got {signal!r}')
        self.signal = signal
        trunk_in = in_channels * (2 if signal == 'raw+edges' else 1)
        layers: List[nn.Module] = []
        for i in range(num_convs):
            layers += [
                nn.Conv2d(trunk_in if i == 0 else hidden, hidden, 3, padding=1),
                nn.LeakyReLU(negative_slope, inplace=True),
            ]
        self.trunk = nn.Sequential(*layers)
        self.outs = nn.ModuleList(nn.Conv2d(hidden, cond_channels, 1) for _ in range(num_scales))

    def signal_at(self, guidance, size: Sequence[int]) -> torch.Tensor:
        """What the trunk sees at ``size`` (``guidance``: a map, or a list/tuple of maps)."""
        if isinstance(guidance, torch.Tensor):
            g = resize_condition(guidance, size)
        else:
            g = torch.cat([resize_condition(m, size) for m in guidance], 1)
        if self.signal == 'raw':
            return g
        edges = sobel_magnitude(g)
        return edges if self.signal == 'edges' else torch.cat([g, edges], 1)

    def forward(self, guidance, sizes: Sequence[Sequence[int]]) -> List[torch.Tensor]:
        if isinstance(guidance, (list, tuple)):
            if not guidance:
                raise ValueError('SFTConditionNet: the list of guidance maps is empty')
            for i, m in enumerate(guidance):
                if not isinstance(m, torch.Tensor) or m.dim() != 4:
                    raise ValueError(
                        f'SFTConditionNet: guidance map {i} must be a [B, C, H, W] tensor, got '
                        f'{tuple(m.shape) if isinstance(m, torch.Tensor) else type(m).__name__}'
                    )
            shapes = [tuple(m.shape) for m in guidance]
            if len({s[0] for s in shapes}) != 1 or sum(s[1] for s in shapes) != self.in_channels:
                raise ValueError(
                    f'SFTConditionNet: the guidance maps {shapes} must share the batch size and have '
                    f'{self.in_channels} channels in all'
                )
        else:
            _check_map('SFTConditionNet', guidance, self.in_channels, 'the guidance')
        sizes = [tuple(int(v) for v in s) for s in sizes]
        if len(sizes) != self.num_scales:
            raise ValueError(f'SFTConditionNet was built for {self.num_scales} scale(s), got {len(sizes)} sizes')
        if any(len(s) != 2 or min(s) < 1 for s in sizes):
            raise ValueError(f'SFTConditionNet: sizes must be positive (H, W) pairs, got {sizes}')
        return [out(self.trunk(self.signal_at(guidance, s))) for s, out in zip(sizes, self.outs)]
