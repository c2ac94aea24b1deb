"""Any folder of images as training data for the upsampler (framework-free: numpy, PIL, torch).

:func:`list_images` finds images recursively (jpg, jpeg, png, bmp, webp, tif, tiff; case-insensitive), sorted so
that the order is the same on every machine; :func:`load_image` reads one as an ``[3, S, S]`` float tensor:
RGB, resized (bilinear) so that it covers ``size``, centre-cropped to
``size x size``, normalised with ImageNet's mean/std (what FeatUp's backbones and upsamplers expect).
"""

from __future__ import annotations

import os
from typing import List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from PIL import Image

from ..upsamplers.guidance import IMAGENET_MEAN, IMAGENET_STD  # what the upsamplers' guidance expects

__all__ = ['IMAGE_EXTENSIONS', 'IMAGENET_MEAN', 'IMAGENET_STD', 'list_images', 'load_image', 'denormalize']

IMAGE_EXTENSIONS = ('.jpg', '.jpeg', '.png', '.bmp', '.webp', '.tif', '.tiff')


def list_images(
    root: Union[str, os.PathLike], extensions: Sequence[str] = IMAGE_EXTENSIONS, recursive: bool = True
) -> List[str]:
    """Sorted paths of the image files under ``root`` (hidden files and folders skipped)."""
    root = os.fspath(root)
    if not os.path.isdir(root):
        raise FileNotFoundError(f'image folder {root!r} does not exist')
    exts = tuple(e.lower() if e.startswith('.') else '.' + e.lower() for e in extensions)
    found = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith('.'))
        found += [os.path.join(dirpath, f) for f in filenames if not f.startswith('.') and f.lower().endswith(exts)]
        if not recursive:
            break
    if not found:
        raise FileNotFoundError(
            f'no image ({", ".join(exts)}) under {root!r}' + ('' if recursive else ' (non-recursive)')
        )
    return sorted(found)


def _size_pair(size: Union[int, Sequence[int]]) -> Tuple[int, int]:
    h, w = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
    if h < 1 or w < 1:
        raise ValueError(f'image size must be positive, got {size!r}')
    return h, w


def load_image(
    path: str, size: Optional[Union[int, Sequence[int]]] = 224, center_crop: bool = True, normalize: bool = True
) -> torch.Tensor:
    """``[3, H, W]`` float tensor of an image file (see the module docstring). ``size=None`` keeps the image's
    size; ``center_crop=False`` resizes to exactly ``size`` instead of resize-shorter-side + crop."""
    with Image.open(path) as im:
        im = im.convert('RGB')
        if size is not None:
            h, w = _size_pair(size)
            if center_crop:
                scale = max(h / im.height, w / im.width)
                rh, rw = max(h, round(im.height * scale)), max(w, round(im.width * scale))
                im = im.resize((rw, rh), Image.BILINEAR)
                top, left = (rh - h) // 2, (rw - w) // 2
                im = im.crop((left, top, left + w, top + h))
            else:
                im = im.resize((w, h), Image.BILINEAR)
        arr = np.asarray(im, dtype=np.float32) / 255.0
    x = torch.from_numpy(arr.copy()).permute(2, 0, 1)
    if normalize:
        x = (x - torch.tensor(IMAGENET_MEAN).view(3, 1, 1)) / torch.tensor(IMAGENET_STD).view(3, 1, 1)
    return x


def denormalize(x: torch.Tensor) -> torch.Tensor:
    """ImageNet-normalised ``[..., 3, H, W]`` back to RGB in [0, 1] (clamped)."""
    mean = x.new_tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = x.new_tensor(IMAGENET_STD).view(3, 1, 1)
    return (x * std + mean).clamp(0, 1)
