"""``dataset=dict(type='ImageFolderDataset', root=...)``: any folder of images for the upsampler training (mmseg's
``DATASETS`` registry). Items are ``dict(inputs=[3, S, S] ImageNet-normalised RGB tensor,
data_samples=dict(img_path=str))``; collate with ``collate_fn=dict(type='default_collate')``."""

from __future__ import annotations

from typing import Optional, Sequence, Union

from mmseg.registry import DATASETS
from torch.utils.data import Dataset

from ...data.images import IMAGE_EXTENSIONS, list_images, load_image


@DATASETS.register_module()
class ImageFolderDataset(Dataset):
    """All images under ``root`` (recursive; jpg/jpeg/png/bmp/webp/tif), resized and centre-cropped to ``size``.

    Args:
        root: the folder.
        size: output size (int or ``(H, W)``; FeatUp: 224). None keeps each image's size (batch size 1 then).
        center_crop: resize to cover + centre crop (default) or plain resize to ``size``.
        max_images: use only the first N (sorted) images.
        extensions, recursive: which files count as images.
    """

    metainfo = dict(classes=())

    def __init__(
        self,
        root: str,
        size: Optional[Union[int, Sequence[int]]] = 224,
        center_crop: bool = True,
        max_images: Optional[int] = None,
        extensions: Sequence[str] = IMAGE_EXTENSIONS,
        recursive: bool = True,
    ):
        self.root, self.size, self.center_crop = root, size, center_crop
        self.paths = list_images(root, extensions, recursive)
        if max_images is not None:
            if max_images < 1:
                raise ValueError(f'max_images must be >= 1, got {max_images}')
            self.paths = self.paths[:max_images]

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, idx: int) -> dict:
        return dict(
            inputs=load_image(self.paths[idx], self.size, self.center_crop), data_samples=dict(img_path=self.paths[idx])
        )
