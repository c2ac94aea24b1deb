"""Jitter views for FeatUp's multi-view reconstruction training (framework-free: torch only): a view's transform
(reflect pad, zoom, crop, flip) is a :class:`JitterParams` in fractions of the side, so the same view applies to the
image and to features of any size; :func:`sample_jitter` draws one as FeatUp does, :func:`apply_jitter` applies it.

Derivation / details: docs/training.md#jitter-views
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Sequence

import torch
import torch.nn.functional as F

__all__ = ['JitterParams', 'sample_jitter', 'apply_jitter', 'reflect_pad']


@dataclass(frozen=True)
class JitterParams:
    """One view's transform, in fractions of the side of the map it is applied to.

    ``pad``: padding of each side (fraction of H for top/bottom, of W for left/right); ``zoom`` >= 1;
    ``offset_y``/``offset_x``: crop offset in the padded (and zoomed) map, as a fraction of the *unpadded*
    height/width; ``flip``: horizontal mirror after the crop.
    """

    pad: float = 0.0
    zoom: float = 1.0
    offset_y: float = 0.0
    offset_x: float = 0.0
    flip: bool = False

    def __post_init__(self):
        if not (self.pad >= 0 and math.isfinite(self.pad)):
            raise ValueError(f'JitterParams.pad must be a finite fraction >= 0, got {self.pad}')
        if not (self.zoom >= 1 and math.isfinite(self.zoom)):
            raise ValueError(f'JitterParams.zoom must be >= 1 (the crop keeps the original size), got {self.zoom}')
        if not (self.offset_y >= 0 and self.offset_x >= 0):
            raise ValueError(f'JitterParams offsets must be >= 0, got ({self.offset_y}, {self.offset_x})')

    @classmethod
    def from_pixels(
        cls, size: Sequence[int], pad: int = 0, zoom: float = 1.0, y: int = 0, x: int = 0, flip: bool = False
    ) -> 'JitterParams':
        """Parameters given in pixels of a map of ``size = (H, W)`` (square maps: pad is exact on both axes)."""
        h, w = int(size[0]), int(size[1])
        return cls(pad=pad / h, zoom=float(zoom), offset_y=y / h, offset_x=x / w, flip=bool(flip))

    def pixels(self, size: Sequence[int]) -> dict:
        """The pixel amounts for a map of ``size = (H, W)``: pads, zoomed size, crop offsets."""
        h, w = int(size[0]), int(size[1])
        py, px = int(round(self.pad * h)), int(round(self.pad * w))
        zh, zw = h + 2 * py, w + 2 * px
        if self.zoom > 1:
            zh, zw = int(round(zh * self.zoom)), int(round(zw * self.zoom))
        y = min(max(int(round(self.offset_y * h)), 0), zh - h)
        x = min(max(int(round(self.offset_x * w)), 0), zw - w)
        return dict(pad_y=py, pad_x=px, zoomed=(zh, zw), y=y, x=x)


def reflect_pad(x: torch.Tensor, pad_y: int, pad_x: int) -> torch.Tensor:
    """Reflect padding (FeatUp's choice) by ``pad_y`` rows and ``pad_x`` columns on each side; sides too short
    to reflect (pad >= side) are padded by repeated reflection."""
    while pad_y > 0 or pad_x > 0:
        sy, sx = min(pad_y, x.shape[-2] - 1), min(pad_x, x.shape[-1] - 1)
        if (pad_y > 0 and sy <= 0) or (pad_x > 0 and sx <= 0):  # a side of length 1: replicate
            return F.pad(x, [pad_x, pad_x, pad_y, pad_y], mode='replicate')
        x = F.pad(x, [sx, sx, sy, sy], mode='reflect')
        pad_y, pad_x = pad_y - sy, pad_x - sx
    return x


def apply_jitter(x: torch.Tensor, params: JitterParams) -> torch.Tensor:
    """Apply one view's transform (reflect pad, zoom, crop, flip) to an ``[B, C, H, W]`` map (image or features);
    the output has its size."""
    if not isinstance(params, JitterParams):
        raise TypeError(f'apply_jitter expects JitterParams, got {type(params).__name__}')
    if x.dim() != 4:
        raise ValueError(f'apply_jitter expects a [B, C, H, W] tensor, got shape {tuple(x.shape)}')
    h, w = x.shape[-2:]
    p = params.pixels((h, w))
    out = reflect_pad(x, p['pad_y'], p['pad_x'])
    if tuple(out.shape[-2:]) != p['zoomed']:
        out = F.interpolate(out, size=p['zoomed'], mode='bilinear', align_corners=False)
    out = out[:, :, p['y'] : p['y'] + h, p['x'] : p['x'] + w]
    return out.flip(-1) if params.flip else out


def sample_jitter(
    size: Sequence[int],
    max_pad: int = 20,
    max_zoom: float = 2.0,
    p_zoom: float = 0.5,
    use_flips: bool = True,
    generator: Optional[torch.Generator] = None,
) -> JitterParams:
    """Draw one view's transform for a map of ``size = (H, W)`` pixels, as FeatUp does: flip with p=0.5, zoom
    uniform in ``[1, max_zoom]`` with probability ``p_zoom`` (else 1), reflect padding of ``max_pad`` pixels,
    then a crop offset drawn uniformly among the integer positions. ``generator`` makes it reproducible."""
    h, w = int(size[0]), int(size[1])
    if min(h, w) < 1 or max_pad < 0 or max_zoom < 1:
        raise ValueError(
            f'sample_jitter: need size >= 1, max_pad >= 0, max_zoom >= 1; got size {size}, '
            f'max_pad {max_pad}, max_zoom {max_zoom}'
        )
    u = torch.rand(3, generator=generator, dtype=torch.float64).tolist()
    flip = use_flips and u[0] > 0.5
    zoom = 1.0 + u[2] * (max_zoom - 1.0) if u[1] < p_zoom else 1.0
    params = JitterParams(pad=max_pad / h, zoom=zoom, flip=flip)
    zh, zw = params.pixels((h, w))['zoomed']
    y = int(torch.randint(0, zh - h + 1, (), generator=generator))
    x = int(torch.randint(0, zw - w + 1, (), generator=generator))
    return JitterParams(pad=max_pad / h, zoom=zoom, offset_y=y / h, offset_x=x / w, flip=flip)
