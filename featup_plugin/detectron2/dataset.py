"""The project's generated segmentation dataset in detectron2's ``DatasetCatalog`` / ``MetadataCatalog``.

``import featup_plugin.detectron2`` registers ``featup_synth_train`` and ``featup_synth_val`` at
``$FEATUP_SYNTH_ROOT`` (default ``data/featup_synth``, relative to the working directory), the root used by
the MMSegmentation configs too. The dataset is generated on first use when that root holds none (200 train /
50 val images of 128x128, seed 0: the MMSegmentation configs' ``synthetic_data``), under a file lock so that
the processes of a distributed run generate it once. An existing complete dataset is used as it is, whatever
its parameters (``python3 tools/dataset_converters/generate_dataset.py --out ROOT ...`` makes other ones).
"""

from __future__ import annotations

import os
import os.path as osp
from typing import Dict, List, Optional, Tuple

from detectron2.data import DatasetCatalog, MetadataCatalog
from PIL import Image

from ..data.prepare import prepare_generated_datasets
from ..data.synthetic import CLASSES, PALETTE, dataset_is_complete, read_meta

__all__ = ['DEFAULT_ROOT', 'DEFAULT_GENERATE', 'IGNORE_LABEL', 'load_featup_synthetic', 'register_featup_synthetic']

DEFAULT_ROOT = 'data/featup_synth'
#: What is generated when the root holds no dataset: the MMSegmentation configs' ``synthetic_data``.
DEFAULT_GENERATE = dict(num_train=200, num_val=50, size=128, seed=0)
#: The label maps never contain it (every pixel has a class), but padding in a batch does.
IGNORE_LABEL = 255
SPLITS = ('train', 'val')


def default_root() -> str:
    return os.environ.get('FEATUP_SYNTH_ROOT') or DEFAULT_ROOT


def load_featup_synthetic(root: str, split: str, generate: Optional[Dict] = None) -> List[Dict]:
    """detectron2 dataset dicts (``file_name``, ``sem_seg_file_name``, ``height``, ``width``, ``image_id``) of
    one split. ``generate``: parameters for ``generate_dataset`` (num_train, num_val, size, seed) used when
    ``root`` holds no complete dataset; None raises ``FileNotFoundError`` instead."""
    if split not in SPLITS:
        raise ValueError(f'split must be one of {SPLITS}, got {split!r}')
    if not dataset_is_complete(root):
        if generate is None:
            raise FileNotFoundError(
                f'no generated dataset in {root!r}. Create it with: '
                f'python3 tools/dataset_converters/generate_dataset.py --out {root}'
            )
        prepare_generated_datasets({'synthetic_data': dict(root=root, **generate)})
    img_dir = osp.join(root, 'img_dir', split)
    ann_dir = osp.join(root, 'ann_dir', split)
    meta = read_meta(root) or {}
    size: Optional[Tuple[int, int]] = tuple(meta['size']) if 'size' in meta else None
    records = []
    for name in sorted(n for n in os.listdir(img_dir) if n.endswith('.png')):
        ann = osp.join(ann_dir, name)
        if not osp.isfile(ann):
            raise FileNotFoundError(f'label map {ann!r} of image {name} is missing')
        file_name = osp.join(img_dir, name)
        if size is None:
            with Image.open(file_name) as im:
                h, w = im.height, im.width
        else:
            h, w = size
        records.append(
            dict(
                file_name=file_name,
                sem_seg_file_name=ann,
                height=int(h),
                width=int(w),
                image_id=f'{split}/{osp.splitext(name)[0]}',
            )
        )
    if not records:
        raise FileNotFoundError(f'no .png image in {img_dir!r}')
    return records


def register_featup_synthetic(
    root: Optional[str] = None,
    prefix: str = 'featup_synth',
    generate: Optional[Dict] = DEFAULT_GENERATE,
    replace: bool = False,
) -> List[str]:
    """Registers ``<prefix>_train`` and ``<prefix>_val`` (semantic segmentation, ``evaluator_type='sem_seg'``,
    ``stuff_classes``/``stuff_colors`` of the generated dataset, ``ignore_label=255``) and returns their names.

    ``root`` defaults to ``$FEATUP_SYNTH_ROOT`` or ``data/featup_synth``; ``generate`` (None: never generate)
    is used when it holds no dataset. ``replace=True`` re-registers names that exist (detectron2 refuses
    otherwise)."""
    root = root or default_root()
    names = []
    for split in SPLITS:
        name = f'{prefix}_{split}'
        if name in DatasetCatalog.list():
            if not replace:
                raise ValueError(f'dataset {name!r} is already registered; pass replace=True to re-register it')
            DatasetCatalog.remove(name)
            MetadataCatalog.remove(name)
        gen = dict(generate) if generate is not None else None
        DatasetCatalog.register(name, lambda root=root, split=split, gen=gen: load_featup_synthetic(root, split, gen))
        MetadataCatalog.get(name).set(
            stuff_classes=list(CLASSES),
            stuff_colors=[tuple(c) for c in PALETTE],
            ignore_label=IGNORE_LABEL,
            evaluator_type='sem_seg',
            image_root=osp.join(root, 'img_dir', split),
            sem_seg_root=osp.join(root, 'ann_dir', split),
            dataset_root=root,
        )
        names.append(name)
    return names


def register_default() -> None:
    """The import-time registration of ``featup_synth_{train,val}`` (skipped for names already taken)."""
    if not any(f'featup_synth_{s}' in DatasetCatalog.list() for s in SPLITS):
        register_featup_synthetic()
