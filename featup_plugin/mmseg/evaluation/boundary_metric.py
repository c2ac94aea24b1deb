"""``BoundaryFScore``: the boundary F-score of :mod:`featup_plugin.evaluation.boundary` as an mmengine metric."""

from collections import OrderedDict
from typing import Dict, Optional, Sequence

import numpy as np
from mmengine.evaluator import BaseMetric
from mmengine.logging import MMLogger, print_log
from mmseg.registry import METRICS

from ...evaluation.boundary import COUNT_KEYS, boundary_counts, scores_from_counts


@METRICS.register_module()
class BoundaryFScore(BaseMetric):
    """Boundary F-score (per-class BF score, sum-accumulated over the dataset), next to mmseg's ``IoUMetric``::

        val_evaluator = [dict(type='IoUMetric', iou_metrics=['mIoU']), dict(type='BoundaryFScore', tolerance=2)]

    Reads ``pred_sem_seg`` and ``gt_sem_seg`` of each data sample as ``IoUMetric`` does; the number of classes
    comes from ``dataset_meta['classes']`` (set by the runner), or from ``num_classes`` when no dataset meta
    is set. Returns ``bF``, ``bPrecision`` and ``bRecall`` in percent (means over the classes with boundary
    pixels), and logs a per-class table.

    Args:
        tolerance: matching distance in pixels (Euclidean, inclusive). Default 2.
        ignore_index: ground-truth label left out of evaluation. Default 255.
        class_agnostic: one boundary map for all classes instead of per class. Default False.
        num_classes: fallback when ``dataset_meta`` is not set.
        collect_device, prefix: see :class:`mmengine.evaluator.BaseMetric`.
    """

    def __init__(
        self,
        tolerance: float = 2,
        ignore_index: int = 255,
        class_agnostic: bool = False,
        num_classes: Optional[int] = None,
        collect_device: str = 'cpu',
        prefix: Optional[str] = None,
        **kwargs,
    ) -> None:
        super().__init__(collect_device=collect_device, prefix=prefix)
        if isinstance(tolerance, bool) or not isinstance(tolerance, (int, float)) or tolerance < 0:
            raise ValueError(f'tolerance must be a number >= 0, got {tolerance!r}')
        self.tolerance = tolerance
        self.ignore_index = ignore_index
        self.class_agnostic = class_agnostic
        self.num_classes = num_classes

    def _num_classes(self) -> int:
        if self.dataset_meta is not None and self.dataset_meta.get('classes') is not None:
            return len(self.dataset_meta['classes'])
        if self.num_classes is None:
            raise ValueError(
                'BoundaryFScore needs the number of classes: dataset_meta["classes"] is not set '
                '(the runner sets it from the dataset); pass num_classes=... otherwise'
            )
        return int(self.num_classes)

    @staticmethod
    def _label_map(data):
        if data.ndim == 3:  # [1, H, W]
            data = data[0]
        return data

    def process(self, data_batch: dict, data_samples: Sequence[dict]) -> None:
        num_classes = self._num_classes()
        for data_sample in data_samples:
            pred = self._label_map(data_sample['pred_sem_seg']['data'])
            gt = self._label_map(data_sample['gt_sem_seg']['data'])
            counts = boundary_counts(pred, gt, num_classes, self.tolerance, self.ignore_index, self.class_agnostic)
            self.results.append(tuple(counts[k] for k in COUNT_KEYS))

    def compute_metrics(self, results: list) -> Dict[str, float]:
        logger: MMLogger = MMLogger.get_current_instance()
        n = 1 if self.class_agnostic else self._num_classes()
        summed = {k: np.zeros(n, np.int64) for k in COUNT_KEYS}
        for res in results:
            for k, v in zip(COUNT_KEYS, res):
                summed[k] += v
        s = scores_from_counts(summed)
        if not self.class_agnostic:
            classes = (self.dataset_meta or {}).get('classes') or [str(i) for i in range(n)]
            lines = [f'{"Class":>16} {"bF":>7} {"bPrec":>7} {"bRec":>7}']
            for i, name in enumerate(classes):
                lines.append(
                    f'{str(name):>16} '
                    + ' '.join(
                        f'{100 * v[i]:7.2f}'
                        for v in (s['per_class_f_score'], s['per_class_precision'], s['per_class_recall'])
                    )
                )
            print_log(f'per class boundary F-score (tolerance {self.tolerance} px):\n' + '\n'.join(lines), logger)
        return OrderedDict(
            bF=round(100 * s['f_score'], 2),
            bPrecision=round(100 * s['precision'], 2),
            bRecall=round(100 * s['recall'], 2),
        )
