"""The upsamplers' guidance image: RGB in [0, 1] normalised with ImageNet's statistics (what FeatUp's trained
upsamplers see), and its recovery from the normalised batches that mmseg and detectron2 feed their models.

Details: docs/jbu.md#guidance-image
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch

__all__ = ['IMAGENET_MEAN', 'IMAGENET_STD', 'CHANNEL_ORDERS', 'recover_rgb', 'imagenet_guidance']

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CHANNEL_ORDERS = ('RGB', 'BGR', 'L')  # 'L': one luma channel (detectron2's INPUT.FORMAT 'L')


def _describe(x) -> str:
    return str(tuple(x.shape)) if isinstance(x, torch.Tensor) else type(x).__name__


def _check(inputs, mean, std, channel_order: str, who: str) -> str:
    """The upper-cased channel order, after checking it, the batch's shape and the number of mean/std values."""
    order = str(channel_order).upper()
    if order not in CHANNEL_ORDERS:
        raise ValueError(f'{who}: channel order must be one of {CHANNEL_ORDERS}, got {channel_order!r}')
    n = 1 if order == 'L' else 3
    if not isinstance(inputs, torch.Tensor) or inputs.dim() != 4 or inputs.shape[1] != n:
        raise ValueError(f'{who} guidance must be a [B, {n}, H, W] image batch ({order}), got {_describe(inputs)}')
    if len(mean) != n or len(std) != n:
        raise ValueError(f'{who}: {order} needs {n} mean/std values, got {list(mean)} / {list(std)}')
    return order


def recover_rgb(
    inputs: torch.Tensor, mean: Sequence[float], std: Sequence[float], channel_order: str = 'RGB', who: str = 'guidance'
) -> torch.Tensor:
    """RGB in [0, 1], ``[B, 3, H, W]``, from a batch normalised as ``(x - mean) / std`` on the 0-255 scale with
    its channels in ``channel_order`` (``'L'``: one channel, repeated)."""
    order = _check(inputs, mean, std, channel_order, who)
    n = 1 if order == 'L' else 3
    rgb = (inputs * inputs.new_tensor(std).view(1, n, 1, 1) + inputs.new_tensor(mean).view(1, n, 1, 1)) / 255.0
    if order == 'BGR':
        rgb = rgb.flip(1)
    elif order == 'L':
        rgb = rgb.expand(-1, 3, -1, -1)
    return rgb


def imagenet_guidance(
    inputs: torch.Tensor,
    mean: Optional[Sequence[float]] = None,
    std: Optional[Sequence[float]] = None,
    channel_order: str = 'RGB',
    who: str = 'guidance',
) -> torch.Tensor:
    """ImageNet-normalised RGB ``[B, 3, H, W]`` from a batch normalised as in :func:`recover_rgb`; with
    ``mean=None`` the batch is taken to be ImageNet-normalised RGB already (checked for shape only).

    Undoing the batch's normalisation and applying ImageNet's is one affine map per channel,
    ``x * std / (255 * s) + (mean / 255 - m) / s``, so it runs as a single fused multiply-add on the image."""
    if mean is None:
        if not isinstance(inputs, torch.Tensor) or inputs.dim() != 4 or inputs.shape[1] != 3:
            raise ValueError(f'{who} guidance must be a [B, 3, H, W] image batch, got {_describe(inputs)}')
        return inputs
    if std is None:
        raise ValueError(f'{who}: give std together with mean')
    order = _check(inputs, mean, std, channel_order, who)
    src = {'RGB': (0, 1, 2), 'BGR': (2, 1, 0), 'L': (0, 0, 0)}[order]
    scale = [float(std[i]) / (255.0 * IMAGENET_STD[c]) for c, i in enumerate(src)]
    shift = [(float(mean[i]) / 255.0 - IMAGENET_MEAN[c]) / IMAGENET_STD[c] for c, i in enumerate(src)]
    x = inputs.flip(1) if order == 'BGR' else inputs.expand(-1, 3, -1, -1) if order == 'L' else inputs
    return torch.addcmul(inputs.new_tensor(shift).view(1, 3, 1, 1), x, inputs.new_tensor(scale).view(1, 3, 1, 1))
