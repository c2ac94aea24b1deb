"""detectron2's ``SemSegEvaluator`` with a label-map reader that works with NumPy 2."""

from __future__ import annotations

from typing import Optional, Union

import numpy as np
from detectron2.evaluation import SemSegEvaluator as _D2SemSegEvaluator
from detectron2.utils.file_io import PathManager
from PIL import Image

__all__ = ['SemSegEvaluator', 'load_sem_seg']


def load_sem_seg(filename: str, copy: bool = False, dtype: Optional[Union[np.dtype, str]] = None) -> np.ndarray:
    """A label map as an array. detectron2 0.7's default reader calls ``np.array(image, copy=False)``, which
    NumPy 2 rejects whenever a copy is needed (always, for a PIL image); this one copies when it must."""
    with PathManager.open(filename, 'rb') as f:
        array = np.asarray(Image.open(f), dtype=dtype)
    return array.copy() if copy else array


class SemSegEvaluator(_D2SemSegEvaluator):
    """detectron2's :class:`~detectron2.evaluation.SemSegEvaluator` (same arguments and metrics: mIoU, fwIoU,
    per-class IoU/ACC, mACC, pACC) whose default ``sem_seg_loading_fn`` is :func:`load_sem_seg`."""

    def __init__(
        self,
        dataset_name,
        distributed=True,
        output_dir=None,
        *,
        sem_seg_loading_fn=load_sem_seg,
        num_classes=None,
        ignore_label=None,
    ):
        super().__init__(
            dataset_name,
            distributed,
            output_dir,
            sem_seg_loading_fn=sem_seg_loading_fn,
            num_classes=num_classes,
            ignore_label=ignore_label,
        )
