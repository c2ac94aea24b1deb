"""Boundary F-score (BF score) for semantic segmentation. Framework-free: numpy only (torch tensors accepted).

Definition (per class, the BF score of Csurka et al., BMVC 2013, with the matching of Martin et al. / DAVIS):

* Valid pixels are those whose ground truth is not ``ignore_index``; everything else is dropped from both maps.
* The boundary of class ``c`` in a label map is its *inner* boundary: the valid pixels labelled ``c`` with at
  least one valid 4-neighbour labelled differently. Neighbours outside the image or in the ignore region do not
  make a boundary, so neither the image border nor the border of an ignore region counts.
* A predicted boundary pixel of class ``c`` is *matched* when a ground-truth boundary pixel of the same class
  lies within Euclidean distance ``tolerance`` (a disk, ``dy² + dx² <= tolerance²``), and vice versa.
* precision_c = matched predicted / predicted boundary pixels; recall_c = matched GT / GT boundary pixels;
  F_c = 2 P R / (P + R).

With ``class_agnostic=True`` boundaries are taken the same way but all classes share one boundary map (a pixel is
a boundary pixel when any valid 4-neighbour has another label), matched regardless of class: one entry instead
of ``num_classes``.

Aggregation is sum-based: :func:`boundary_counts` returns, per class, the four integer counts
(``pred_matched``, ``pred_total``, ``gt_matched``, ``gt_total``). Summing them over images (or over a whole
dataset) and passing the sums to :func:`scores_from_counts` gives dataset-level precision/recall/F per class;
the headline numbers are the means over the classes that have a boundary pixel in the prediction or in the
ground truth (the others are NaN per class and left out). For such a class, an empty denominator gives 0
(e.g. a class predicted but absent from the ground truth has recall 0, and its precision is 0 too).
If no class has any boundary pixel at all, prediction and ground truth agree and P = R = F = 1.

Predicted labels outside ``[0, num_classes)`` still create boundaries for their neighbours but are no class
themselves; ground-truth labels outside that range (other than ``ignore_index``) raise ``ValueError``.
"""

from typing import Dict, Tuple

import numpy as np

__all__ = ['boundary_counts', 'scores_from_counts', 'boundary_f_score', 'boundary_map', 'COUNT_KEYS']

COUNT_KEYS = ('pred_matched', 'pred_total', 'gt_matched', 'gt_total')


def _to_numpy(x, name: str) -> np.ndarray:
    if hasattr(x, 'detach'):  # torch.Tensor, without importing torch
        x = x.detach().cpu().numpy()
    x = np.asarray(x)
    if x.dtype.kind not in 'iub':
        raise TypeError(f'{name} must hold integer labels, got dtype {x.dtype}')
    return x.astype(np.int64, copy=False)


def boundary_map(label: np.ndarray, valid: np.ndarray = None) -> np.ndarray:
    """Inner boundary ([H, W] bool) of a label map: valid pixels with a valid 4-neighbour of another label."""
    label = np.asarray(label)
    if valid is None:
        valid = np.ones(label.shape, bool)
    b = np.zeros(label.shape, bool)
    # vertical neighbours
    d = (label[1:] != label[:-1]) & valid[1:] & valid[:-1]
    b[1:] |= d
    b[:-1] |= d
    # horizontal neighbours
    d = (label[:, 1:] != label[:, :-1]) & valid[:, 1:] & valid[:, :-1]
    b[:, 1:] |= d
    b[:, :-1] |= d
    return b & valid


def _disk_offsets(tolerance: float):
    r = int(np.floor(tolerance))
    return [(dy, dx) for dy in range(-r, r + 1) for dx in range(-r, r + 1) if dy * dy + dx * dx <= tolerance**2]


def _matched(src: np.ndarray, dst: np.ndarray, tolerance: float) -> np.ndarray:
    """src, dst: [H, W] int, class id on boundary pixels and -1 elsewhere. True where src has a boundary pixel
    with a dst boundary pixel of the same class within the tolerance disk."""
    h, w = src.shape
    r = int(np.floor(tolerance))
    padded = np.pad(dst, r, constant_values=-1)
    out = np.zeros(src.shape, bool)
    for dy, dx in _disk_offsets(tolerance):
        out |= padded[r + dy : r + dy + h, r + dx : r + dx + w] == src
    return out & (src >= 0)


def _check_common(num_classes, tolerance, ignore_index) -> None:
    if not isinstance(num_classes, (int, np.integer)) or isinstance(num_classes, bool) or num_classes < 1:
        raise ValueError(f'num_classes must be a positive int, got {num_classes!r}')
    if (
        isinstance(tolerance, bool)
        or not isinstance(tolerance, (int, float, np.integer, np.floating))
        or not np.isfinite(tolerance)
        or tolerance < 0
    ):
        raise ValueError(f'tolerance must be a finite number >= 0 (pixels), got {tolerance!r}')
    if ignore_index is not None and (not isinstance(ignore_index, (int, np.integer)) or isinstance(ignore_index, bool)):
        raise ValueError(f'ignore_index must be an int or None, got {ignore_index!r}')


def _counts_2d(pred, gt, num_classes, tolerance, ignore_index, class_agnostic) -> Tuple[np.ndarray, ...]:
    valid = np.ones(gt.shape, bool) if ignore_index is None else gt != ignore_index
    bad = valid & ((gt < 0) | (gt >= num_classes))
    if bad.any():
        raise ValueError(
            f'ground truth holds label(s) {np.unique(gt[bad])[:5].tolist()} outside '
            f'[0, {num_classes}) that are not ignore_index={ignore_index}'
        )
    pb = boundary_map(pred, valid)
    gb = boundary_map(gt, valid)
    if class_agnostic:
        n = 1
        pc = np.where(pb, 0, -1)
        gc = np.where(gb, 0, -1)
    else:
        n = num_classes
        pb &= (pred >= 0) & (pred < num_classes)
        pc = np.where(pb, pred, -1)
        gc = np.where(gb, gt, -1)
    pm = _matched(pc, gc, tolerance)
    gm = _matched(gc, pc, tolerance)
    return (
        np.bincount(pc[pm], minlength=n),
        np.bincount(pc[pb], minlength=n),
        np.bincount(gc[gm], minlength=n),
        np.bincount(gc[gb], minlength=n),
    )


def boundary_counts(
    pred, gt, num_classes: int, tolerance: float = 2, ignore_index: int = 255, class_agnostic: bool = False
) -> Dict[str, np.ndarray]:
    """Per-class boundary counts of one image (``[H, W]``) or of a batch (``[..., H, W]``, summed).

    Returns a dict of int64 arrays of length ``num_classes`` (1 with ``class_agnostic``) under
    :data:`COUNT_KEYS`: matched and total predicted boundary pixels, matched and total GT boundary pixels.
    Sum these over images and call :func:`scores_from_counts` for a dataset-level score.
    """
    _check_common(num_classes, tolerance, ignore_index)
    pred = _to_numpy(pred, 'pred')
    gt = _to_numpy(gt, 'gt')
    if pred.shape != gt.shape or pred.ndim < 2:
        raise ValueError(f'pred and gt must have the same shape [..., H, W], got {pred.shape} and {gt.shape}')
    n = 1 if class_agnostic else int(num_classes)
    total = [np.zeros(n, np.int64) for _ in COUNT_KEYS]
    for p, g in zip(pred.reshape(-1, *pred.shape[-2:]), gt.reshape(-1, *gt.shape[-2:])):
        for acc, c in zip(total, _counts_2d(p, g, int(num_classes), float(tolerance), ignore_index, class_agnostic)):
            acc += c
    return dict(zip(COUNT_KEYS, total))


def scores_from_counts(counts: Dict[str, np.ndarray]) -> Dict[str, object]:
    """Precision, recall and F from (summed) :func:`boundary_counts`.

    Returns ``precision``, ``recall``, ``f_score`` (floats in [0, 1], means over the classes that have boundary
    pixels) and ``per_class_precision``, ``per_class_recall``, ``per_class_f_score`` (arrays, NaN for classes
    without any boundary pixel).
    """
    pm, pt, gm, gt = (np.asarray(counts[k], np.float64) for k in COUNT_KEYS)
    present = (pt > 0) | (gt > 0)
    with np.errstate(divide='ignore', invalid='ignore'):
        p = np.where(pt > 0, pm / np.maximum(pt, 1), 0.0)
        r = np.where(gt > 0, gm / np.maximum(gt, 1), 0.0)
        f = np.where(p + r > 0, 2 * p * r / np.maximum(p + r, 1e-300), 0.0)
    p, r, f = (np.where(present, v, np.nan) for v in (p, r, f))
    if present.any():
        mp, mr, mf = (float(np.nanmean(v)) for v in (p, r, f))
    else:
        mp = mr = mf = 1.0
    return dict(precision=mp, recall=mr, f_score=mf, per_class_precision=p, per_class_recall=r, per_class_f_score=f)


def boundary_f_score(
    pred, gt, num_classes: int, tolerance: float = 2, ignore_index: int = 255, class_agnostic: bool = False
) -> Dict[str, object]:
    """Boundary F-score of one prediction (definition in the module docstring).

    Args:
        pred, gt: integer label maps ``[H, W]`` (or ``[..., H, W]``, counts summed), numpy or torch.
        num_classes: number of classes; GT labels must be in ``[0, num_classes)`` or ``ignore_index``.
        tolerance: matching distance in pixels (Euclidean, inclusive); 0 asks for exact positions.
        ignore_index: GT label excluded from evaluation (None: no ignore label).
        class_agnostic: match one boundary map for all classes instead of per class.

    Returns:
        ``f_score``, ``precision``, ``recall`` (floats in [0, 1]; 1.0 for a perfect prediction), the per-class
        arrays of :func:`scores_from_counts`, and the raw counts of :func:`boundary_counts` under
        :data:`COUNT_KEYS` for sum-based accumulation.
    """
    counts = boundary_counts(pred, gt, num_classes, tolerance, ignore_index, class_agnostic)
    return dict(scores_from_counts(counts), **counts)
