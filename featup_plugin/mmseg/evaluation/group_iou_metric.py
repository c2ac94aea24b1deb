"""``GroupIoUMetric``: mmseg's ``IoUMetric`` plus the mean IoU of named groups of classes (e.g. the thin ones)."""

from collections import OrderedDict
from typing import Dict, Mapping, Optional, Sequence, Union

import numpy as np
from mmengine.logging import MMLogger, print_log
from mmseg.evaluation.metrics import IoUMetric
from mmseg.registry import METRICS


@METRICS.register_module()
class GroupIoUMetric(IoUMetric):
    """``IoUMetric`` that also returns ``<group>_iou``: the mean IoU over each group of classes::

        val_evaluator = [
            dict(type='GroupIoUMetric', iou_metrics=['mIoU'],
                 class_groups=dict(thin=['wire', 'pole', 'vine'], small=['pebble', 'marker'])),
            dict(type='BoundaryFScore', tolerance=2),
        ]

    gives ``aAcc``, ``mIoU``, ``mAcc`` (as ``IoUMetric``, same per-class table) and ``thin_iou``, ``small_iou``, in
    percent with 2 decimals: the mean of the per-class IoUs of the group's classes, computed as ``mIoU`` is (IoU of
    a class = intersection / union summed over the dataset; a class with an empty union, i.e. absent from both the
    ground truth and the prediction, is left out of the mean, as ``mIoU`` leaves it out; NaN if all are).

    Args:
        class_groups: ``{group name: [class name or index, ...]}``. Names are looked up in
            ``dataset_meta['classes']``; an unknown name or an index out of range raises ``ValueError``.
        Other arguments: see :class:`mmseg.evaluation.IoUMetric`.
    """

    def __init__(self, class_groups: Optional[Mapping[str, Sequence[Union[str, int]]]] = None, **kwargs) -> None:
        super().__init__(**kwargs)
        groups = OrderedDict()
        for name, members in (class_groups or {}).items():
            if isinstance(members, (str, int)) or not members:
                raise ValueError(f'class group {name!r} must be a non-empty list of class names or indices')
            groups[str(name)] = list(members)
        self.class_groups = groups

    def _group_indices(self, class_names: Sequence[str]) -> Dict[str, list]:
        out = OrderedDict()
        for group, members in self.class_groups.items():
            idx = []
            for m in members:
                if isinstance(m, (int, np.integer)) and not isinstance(m, bool):
                    if not 0 <= m < len(class_names):
                        raise ValueError(f'class group {group!r}: index {m} out of range ({len(class_names)} classes)')
                    idx.append(int(m))
                elif m in class_names:
                    idx.append(list(class_names).index(m))
                else:
                    raise ValueError(f'class group {group!r}: unknown class {m!r} (classes: {list(class_names)})')
            out[group] = idx
        return out

    def compute_metrics(self, results: list) -> Dict[str, float]:
        metrics = super().compute_metrics(results)
        if self.format_only or not self.class_groups:
            return metrics
        class_names = self.dataset_meta['classes']
        groups = self._group_indices(class_names)
        inter, union = (sum(r[i] for r in results) for i in (0, 1))
        inter = np.asarray(inter, np.float64)
        union = np.asarray(union, np.float64)
        with np.errstate(divide='ignore', invalid='ignore'):
            iou = inter / union  # NaN where the union is empty, as in IoUMetric
        if self.nan_to_num is not None:
            iou = np.nan_to_num(iou, nan=self.nan_to_num)
        group_iou = OrderedDict()
        for group, idx in groups.items():
            vals = iou[idx]
            group_iou[f'{group}_iou'] = (
                float('nan') if np.all(np.isnan(vals)) else float(np.round(np.nanmean(vals) * 100, 2))
            )
        out = OrderedDict()
        for key, val in metrics.items():  # the groups right after mIoU (last without it), for the log line
            out[key] = val
            if key == 'mIoU':
                out.update(group_iou)
        out.update((k, v) for k, v in group_iou.items() if k not in out)
        logger: MMLogger = MMLogger.get_current_instance()
        summary = ', '.join(
            f'{g}_iou {out[f"{g}_iou"]:.2f} ({"/".join(str(class_names[i]) for i in idx)})' for g, idx in groups.items()
        )
        print_log(f'mIoU {metrics.get("mIoU", float("nan")):.2f}; class groups: {summary}', logger)
        return out
