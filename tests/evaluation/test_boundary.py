"""Boundary F-score (the framework-free function and the mmengine metric BoundaryFScore) and GroupIoUMetric."""

import os

import numpy as np
import pytest
import torch

from featup_plugin.data.synthetic import CLASSES, generate_scene
from featup_plugin.evaluation.boundary import (
    COUNT_KEYS,
    boundary_counts,
    boundary_f_score,
    boundary_map,
    scores_from_counts,
)

# 4 x 4 hand-computed case: GT splits columns 0-1 | 2-3; the prediction moves the lower half of the edge right.
GT = np.array([[0, 0, 1, 1]] * 4)
PRED = np.array([[0, 0, 1, 1], [0, 0, 1, 1], [0, 0, 0, 1], [0, 0, 0, 1]])


def test_boundary_map_is_the_inner_4_neighbour_boundary():
    expected = np.zeros((4, 4), bool)
    expected[:, 1] = expected[:, 2] = True
    assert np.array_equal(boundary_map(GT), expected)
    # class 0 boundary: (0,1) (1,1) (2,2) (3,2); class 1 boundary: (0,2) (1,2) (2,3) (3,3); (1,3) has no
    # 4-neighbour of another class (its diagonal (2,2) does not count)
    b = boundary_map(PRED)
    assert sorted(zip(*np.nonzero(b))) == [(0, 1), (0, 2), (1, 1), (1, 2), (2, 2), (2, 3), (3, 2), (3, 3)]


def test_hand_computed_case():
    # tolerance 0: each class has 4 predicted and 4 GT boundary pixels, 2 of them in the same place
    r = boundary_f_score(PRED, GT, num_classes=2, tolerance=0)
    assert r['pred_total'].tolist() == [4, 4] and r['gt_total'].tolist() == [4, 4]
    assert r['pred_matched'].tolist() == [2, 2] and r['gt_matched'].tolist() == [2, 2]
    assert r['precision'] == r['recall'] == r['f_score'] == pytest.approx(0.5)
    # tolerance 1: the displaced pixels are 1 px from a GT boundary pixel of their class
    r = boundary_f_score(PRED, GT, num_classes=2, tolerance=1)
    assert r['f_score'] == pytest.approx(1.0)
    # class-agnostic, tolerance 0: 8 predicted boundary pixels, 8 GT ones, 6 shared -> P = R = F = 0.75,
    # more than per class, where (2,2) is a class-0 pixel but the GT boundary there is class 1's
    r = boundary_f_score(PRED, GT, num_classes=2, tolerance=0, class_agnostic=True)
    assert r['pred_total'].tolist() == [8] and r['pred_matched'].tolist() == [6]
    assert r['gt_total'].tolist() == [8] and r['gt_matched'].tolist() == [6]
    assert r['f_score'] == pytest.approx(0.75)


def test_unequal_precision_and_recall():
    gt = np.zeros((10, 10), int)
    gt[:, 5:] = 1
    pred = gt.copy()
    pred[2, 1] = 1  # a spurious one-pixel blob, 3 px from the GT edge (column 4 | 5)
    r = boundary_f_score(pred, gt, num_classes=2, tolerance=1)
    # class 1: 10 + 1 predicted boundary pixels, 10 matched; class 0: 10 + 4 (the blob's neighbours), 10 matched
    assert r['pred_total'].tolist() == [14, 11] and r['pred_matched'].tolist() == [10, 10]
    assert r['gt_total'].tolist() == [10, 10] and r['gt_matched'].tolist() == [10, 10]
    p = (10 / 14 + 10 / 11) / 2
    f = (2 * (10 / 14) / (10 / 14 + 1) + 2 * (10 / 11) / (10 / 11 + 1)) / 2
    assert r['precision'] == pytest.approx(p) and r['recall'] == 1.0 and r['f_score'] == pytest.approx(f)


def test_perfect_prediction_scores_one():
    _, lab = generate_scene(4, 96)
    r = boundary_f_score(lab, lab, len(CLASSES))
    assert r['f_score'] == r['precision'] == r['recall'] == 1.0
    assert (r['pred_total'] == r['gt_total']).all() and r['gt_total'].sum() > 100
    # torch input, [1, H, W] and batches are accepted
    r = boundary_f_score(torch.from_numpy(lab)[None], torch.from_numpy(lab)[None], len(CLASSES), tolerance=0)
    assert r['f_score'] == 1.0
    # no boundary at all anywhere: agreement
    flat = np.zeros((8, 8), int)
    assert boundary_f_score(flat, flat, 3)['f_score'] == 1.0


def test_shift_within_tolerance_beats_shift_beyond():
    _, lab = generate_scene(11, 96)
    n = len(CLASSES)
    scores = [boundary_f_score(np.roll(lab, s, axis=1), lab, n, tolerance=2)['f_score'] for s in (0, 1, 2, 4, 6)]
    assert scores[0] == 1.0
    assert scores[1] > 0.9 and scores[2] > 0.85  # within tolerance: only the wrapped column and thin
    assert scores[3] < scores[2] - 0.2  # structures (which move by more than their width) suffer
    assert scores[4] <= scores[3]
    # a larger tolerance forgives the 4-px shift
    assert boundary_f_score(np.roll(lab, 4, axis=1), lab, n, tolerance=4)['f_score'] > scores[3] + 0.2
    # tolerance is Euclidean: a diagonal shift by (1, 1) is within 1.5 but not within 1
    sq = np.zeros((20, 20), int)
    sq[5:12, 5:12] = 1
    moved = np.roll(sq, (1, 1), axis=(0, 1))
    assert boundary_f_score(moved, sq, 2, tolerance=1.5)['f_score'] == 1.0
    assert boundary_f_score(moved, sq, 2, tolerance=1)['f_score'] < 1.0


def test_ignore_pixels_are_ignored():
    _, lab = generate_scene(2, 64)
    gt = lab.astype(np.int64)
    gt[10:40, 20:50] = 255
    pred = lab.astype(np.int64)
    rng = np.random.default_rng(0)
    pred[10:40, 20:50] = rng.integers(0, len(CLASSES), (30, 30))  # garbage where the GT is ignored
    r = boundary_f_score(pred, gt, len(CLASSES))
    assert r['f_score'] == 1.0
    # the border of the ignore region is no boundary: a uniform GT with an ignore hole has no boundary pixel
    flat = np.zeros((16, 16), int)
    holed = flat.copy()
    holed[4:8, 4:8] = 255
    r = boundary_f_score(flat, holed, 2)
    assert r['gt_total'].sum() == 0 and r['pred_total'].sum() == 0 and r['f_score'] == 1.0
    # without an ignore index, 255 is out of range for the GT
    with pytest.raises(ValueError, match='outside'):
        boundary_f_score(flat, holed, 2, ignore_index=None)


def test_missing_and_spurious_classes():
    gt = np.zeros((12, 12), int)
    gt[:, 6:] = 1
    pred = gt.copy()
    pred[3:6, 2:4] = 2  # class 2 absent from the GT
    r = boundary_f_score(pred, gt, 3)
    assert r['per_class_recall'][2] == 0 and r['per_class_precision'][2] == 0 and r['per_class_f_score'][2] == 0
    assert r['f_score'] < 0.7
    # a GT class that is never predicted: recall 0
    r = boundary_f_score(np.zeros_like(gt), gt, 3)
    assert r['recall'] == 0 and r['f_score'] == 0
    assert np.isnan(r['per_class_f_score'][2])  # no boundary of class 2 anywhere: left out of the mean
    # out-of-range predicted labels are no class but still bound their neighbours
    pred = gt.copy()
    pred[0:2, 0:2] = 255
    r = boundary_f_score(pred, gt, 2)
    assert r['pred_total'].tolist() == [12 + 4, 12]  # (0,2) (1,2) (2,0) (2,1) border the 255 block


def test_counts_accumulate_over_images():
    labs = [generate_scene(s, 48)[1] for s in range(3)]
    preds = [np.roll(lab, 2, axis=0) for lab in labs]
    n = len(CLASSES)
    per_image = [boundary_counts(p, g, n) for p, g in zip(preds, labs)]
    summed = {k: sum(c[k] for c in per_image) for k in COUNT_KEYS}
    batch = boundary_counts(np.stack(preds), np.stack(labs), n)
    assert all(np.array_equal(summed[k], batch[k]) for k in COUNT_KEYS)
    assert scores_from_counts(summed)['f_score'] == pytest.approx(
        boundary_f_score(np.stack(preds), np.stack(labs), n)['f_score']
    )


def test_bad_arguments():
    a = np.zeros((4, 4), int)
    with pytest.raises(ValueError, match='shape'):
        boundary_f_score(a, np.zeros((4, 5), int), 2)
    with pytest.raises(ValueError, match='num_classes'):
        boundary_f_score(a, a, 0)
    with pytest.raises(ValueError, match='tolerance'):
        boundary_f_score(a, a, 2, tolerance=-1)
    with pytest.raises(TypeError, match='pred'):
        boundary_f_score(a.astype(float), a, 2)
    with pytest.raises(ValueError, match='outside'):
        boundary_f_score(a, a + 3, 2)


# ---------------------------------------------------------------------------------------------------------
# mmengine metric


@pytest.fixture(scope='module')
def mm():
    pytest.importorskip('mmseg')
    from mmseg.utils import register_all_modules

    register_all_modules()
    from mmseg.registry import METRICS

    import featup_plugin  # noqa: F401

    return METRICS


def make_sample(pred, gt):
    from mmengine.structures import PixelData
    from mmseg.structures import SegDataSample

    s = SegDataSample()
    s.gt_sem_seg = PixelData(data=torch.as_tensor(gt, dtype=torch.int64)[None])
    s.pred_sem_seg = PixelData(data=torch.as_tensor(pred, dtype=torch.int64)[None])
    return s


def test_metric_matches_the_function_and_runs_next_to_iou(mm):
    from mmengine.evaluator import Evaluator

    labs = [generate_scene(s, 64)[1] for s in range(4)]
    preds = [lab if i == 0 else np.roll(lab, i, axis=1) for i, lab in enumerate(labs)]
    evaluator = Evaluator([dict(type='IoUMetric', iou_metrics=['mIoU']), dict(type='BoundaryFScore', tolerance=2)])
    evaluator.dataset_meta = dict(classes=CLASSES, palette=[[0, 0, 0]] * len(CLASSES))
    for i in range(0, 4, 2):  # two batches of two
        evaluator.process([make_sample(p, g) for p, g in zip(preds[i : i + 2], labs[i : i + 2])])
    res = evaluator.evaluate(4)
    assert {'mIoU', 'bF', 'bPrecision', 'bRecall'} <= set(res)
    expected = boundary_f_score(np.stack(preds), np.stack(labs), len(CLASSES), tolerance=2)
    assert res['bF'] == pytest.approx(100 * expected['f_score'], abs=0.01)
    assert res['bPrecision'] == pytest.approx(100 * expected['precision'], abs=0.01)
    assert res['bRecall'] == pytest.approx(100 * expected['recall'], abs=0.01)
    assert 0 < res['bF'] < 100


def test_metric_perfect_ignore_and_tolerance(mm):
    _, lab = generate_scene(9, 64)
    metric = mm.build(dict(type='BoundaryFScore', tolerance=2))
    assert type(metric).__name__ == 'BoundaryFScore'
    metric.dataset_meta = dict(classes=CLASSES)
    gt = lab.astype(np.int64)
    gt[:16] = 255
    pred = lab.astype(np.int64)
    pred[:16] = 0  # wrong, but ignored
    metric.process({}, [make_sample(pred, gt).to_dict()])
    assert metric.evaluate(1) == {'bF': 100.0, 'bPrecision': 100.0, 'bRecall': 100.0}

    strict = mm.build(dict(type='BoundaryFScore', tolerance=0))
    loose = mm.build(dict(type='BoundaryFScore', tolerance=3))
    for m in (strict, loose):
        m.dataset_meta = dict(classes=CLASSES)
        m.process({}, [make_sample(np.roll(lab, 2, axis=0), lab).to_dict()])
    assert strict.evaluate(1)['bF'] < loose.evaluate(1)['bF']


def test_metric_needs_the_number_of_classes(mm):
    metric = mm.build(dict(type='BoundaryFScore'))
    with pytest.raises(ValueError, match='num_classes'):
        metric.process({}, [make_sample(np.zeros((4, 4)), np.zeros((4, 4))).to_dict()])
    metric = mm.build(dict(type='BoundaryFScore', num_classes=2, class_agnostic=True, tolerance=0))
    metric.process({}, [make_sample(PRED, GT).to_dict()])
    assert metric.evaluate(1)['bF'] == 75.0
    with pytest.raises(ValueError, match='tolerance'):
        mm.build(dict(type='BoundaryFScore', tolerance=-2))


# ---------------------------------------------------------------------------------------------------------
# GroupIoUMetric: IoUMetric + the mean IoU of groups of classes (thin_iou next to mIoU in the main job)


def test_group_iou_is_the_mean_of_its_classes_ious(mm):
    from mmengine.evaluator import Evaluator

    classes = ('a', 'b', 'c', 'd')
    # hand-made 2 x 4 labels over two images; per-class IoU (intersection / union over both images):
    #   a: I 3, U 4 -> 0.75   b: I 1, U 3 -> 1/3   c: I 2, U 2 -> 1.0   d: I 0, U 1 -> 0.0
    gt1 = np.array([[0, 0, 1, 1], [0, 2, 2, 3]])
    pr1 = np.array([[0, 0, 1, 0], [0, 2, 2, 1]])
    gt2 = np.array([[255, 255, 255, 255], [255, 255, 255, 255]])  # all ignored
    pr2 = np.array([[3, 3, 3, 3], [1, 1, 1, 1]])
    ious = {'a': 3 / 4, 'b': 1 / 3, 'c': 1.0, 'd': 0.0}
    evaluator = Evaluator(
        [
            dict(type='GroupIoUMetric', iou_metrics=['mIoU'], class_groups=dict(thin=['b', 'c', 'd'], ab=[0, 'b'])),
            dict(type='BoundaryFScore', tolerance=2),
        ]
    )
    evaluator.dataset_meta = dict(classes=classes, palette=[[0, 0, 0]] * len(classes))
    evaluator.process([make_sample(pr1, gt1), make_sample(pr2, gt2)])
    res = evaluator.evaluate(2)
    assert res['thin_iou'] == pytest.approx(100 * (ious['b'] + ious['c'] + ious['d']) / 3, abs=0.005)
    assert res['ab_iou'] == pytest.approx(100 * (ious['a'] + ious['b']) / 2, abs=0.005)
    assert res['mIoU'] == pytest.approx(100 * sum(ious.values()) / 4, abs=0.005)
    assert 'bF' in res and 'aAcc' in res
    keys = list(res)
    assert keys.index('thin_iou') == keys.index('mIoU') + 1  # printed next to mIoU


def test_group_iou_skips_absent_classes_and_checks_names(mm):
    metric = mm.build(dict(type='GroupIoUMetric', class_groups=dict(g=['a', 'c'], none=['c'])))
    metric.dataset_meta = dict(classes=('a', 'b', 'c'))
    # class c is in neither the label nor the prediction: left out of the mean, as mIoU leaves it out
    metric.process({}, [make_sample(np.array([[0, 1], [1, 1]]), np.array([[0, 0], [1, 1]])).to_dict()])
    res = metric.evaluate(1)
    assert res['g_iou'] == pytest.approx(50.0) and np.isnan(res['none_iou'])
    bad = mm.build(dict(type='GroupIoUMetric', class_groups=dict(g=['wire'])))
    bad.dataset_meta = dict(classes=('a', 'b'))
    bad.process({}, [make_sample(np.zeros((2, 2)), np.zeros((2, 2))).to_dict()])
    with pytest.raises(ValueError, match='unknown class'):
        bad.evaluate(1)
    with pytest.raises(ValueError, match='non-empty'):
        mm.build(dict(type='GroupIoUMetric', class_groups=dict(g='wire')))


def test_the_synthetic_dataset_config_reports_thin_iou():
    Config = pytest.importorskip('mmengine.config').Config

    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    cfg = Config.fromfile(os.path.join(root, 'configs', '_base_', 'datasets', 'featup_synth.py'))
    (group,) = [e for e in cfg.val_evaluator if e['type'] == 'GroupIoUMetric']
    assert group['class_groups']['thin'] == ['wire', 'pole', 'vine']
    assert group['class_groups']['small'] == ['pebble', 'marker']
    assert {CLASSES[i] for i in (5, 6, 7)} == set(group['class_groups']['thin'])
