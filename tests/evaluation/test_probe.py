"""FeatUp's probes and CAM scores (featup_plugin.evaluation.probe) against independent re-derivations."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from featup_plugin.evaluation import boundary_f_score
from featup_plugin.evaluation.probe import (
    LinearProbe,
    cam_drop_increase,
    cam_masks,
    depth_metrics,
    gather_pixels,
    predict_probe,
    probe_loss,
    seg_metrics,
    train_probe,
)


def test_seg_metrics_match_a_per_class_loop():
    rng = np.random.default_rng(0)
    gt = rng.integers(0, 5, (3, 20, 24))
    gt[0, :4] = 255
    pred = np.where(rng.random(gt.shape) < 0.7, np.where(gt == 255, 0, gt), rng.integers(0, 6, gt.shape))  # 5: none
    got = seg_metrics(torch.from_numpy(pred), torch.from_numpy(gt), 5)
    valid = gt != 255
    ious = []
    for c in range(5):
        inter = ((pred == c) & (gt == c) & valid).sum()
        union = (((pred == c) | (gt == c)) & valid).sum()
        if union:
            ious.append(inter / union)
    assert got['miou'] == pytest.approx(100 * np.mean(ious))
    assert got['acc'] == pytest.approx(100 * ((pred == gt) & valid).sum() / valid.sum())
    assert got['bf'] == pytest.approx(100 * boundary_f_score(pred, gt, 5, tolerance=2)['f_score'])
    perfect = seg_metrics(torch.from_numpy(np.where(valid, gt, 0)), torch.from_numpy(gt), 5)
    assert perfect == {'miou': 100.0, 'acc': 100.0, 'bf': 100.0}
    with pytest.raises(ValueError, match='outside'):
        seg_metrics(torch.zeros(1, 4, 4), torch.full((1, 4, 4), 7), 5)


def test_depth_metrics_formulas():
    rng = np.random.default_rng(1)
    gt = rng.uniform(1, 10, (2, 8, 9))
    pred = gt * rng.uniform(0.7, 1.4, gt.shape)
    gt[0, 0, 0] = 0  # invalid pixel, left out
    got = depth_metrics(torch.from_numpy(pred), torch.from_numpy(gt))
    v = gt > 1e-3
    assert got['rmse'] == pytest.approx(np.sqrt(((pred[v] - gt[v]) ** 2).mean()))
    assert got['delta1'] == pytest.approx(100 * (np.maximum(pred[v] / gt[v], gt[v] / pred[v]) < 1.25).mean())


def test_probes_learn_linearly_decodable_targets():
    torch.manual_seed(0)
    labels = torch.randint(0, 4, (12, 8, 8))
    big = labels.repeat_interleave(4, 1).repeat_interleave(4, 2)  # labels at 32x32, features at 8x8
    feats = F.one_hot(labels, 4).permute(0, 3, 1, 2).float() * 3
    probe = train_probe(feats, big, 'seg', num_classes=4, steps=300, lr=5e-2, dropout=0.0)
    pred = predict_probe(probe, feats, (32, 32), 'seg')
    assert pred.shape == (12, 32, 32) and seg_metrics(pred, big, 4)['acc'] > 90
    depth = torch.rand(12, 8, 8) * 5 + 1
    dfeats = torch.stack([depth.log(), torch.ones_like(depth)], 1)
    dprobe = train_probe(dfeats, depth, 'depth', steps=600, lr=5e-2, dropout=0.0)
    dpred = predict_probe(dprobe, dfeats, (8, 8), 'depth')
    assert depth_metrics(dpred, depth)['delta1'] > 99
    with pytest.raises(ValueError, match="task must be 'seg' or 'depth'"):
        train_probe(feats, big, 'cls')
    with pytest.raises(ValueError, match='same N'):
        train_probe(feats[:3], big, 'seg', num_classes=4)
    with pytest.raises(ValueError, match='dropout'):
        LinearProbe(4, 2, dropout=1.0)


def test_gathered_pixels_give_the_full_map_loss():
    # a 1x1 probe is per pixel: gathering every pixel (in any order) gives the full-map loss, dropout included
    torch.manual_seed(1)
    feats = torch.randn(3, 5, 6, 7)
    labels = torch.randint(0, 4, (3, 6, 7))
    labels[0, :2] = 255  # ignored pixels stay ignored
    depth = torch.rand(3, 6, 7) * 4 + 0.5
    flat = feats.flatten(2).transpose(1, 2).contiguous()
    idx = torch.tensor([2, 0, 1])
    pix = torch.stack([torch.randperm(42) for _ in range(3)])
    for task, tgt, k in (('seg', labels, 4), ('depth', depth, 1)):
        probe = LinearProbe(5, k, dropout=0.0)
        full = probe_loss(probe(feats[idx]), tgt[idx], task)
        sampled = probe_loss(probe(gather_pixels(flat, idx, pix)), gather_pixels(tgt.flatten(1), idx, pix), task)
        assert torch.allclose(full, sampled, atol=1e-6), task
    # Dropout2d drops whole channels per image: the same mask on a gathered map as on the full map
    probe = LinearProbe(5, 4, dropout=0.5).train()
    torch.manual_seed(7)
    full = probe_loss(probe(feats[idx]), labels[idx], 'seg')
    torch.manual_seed(7)
    sampled = probe_loss(probe(gather_pixels(flat, idx, pix)), gather_pixels(labels.flatten(1), idx, pix), 'seg')
    assert torch.allclose(full, sampled, atol=1e-6)


def test_probe_loss_class_weight_is_a_weighted_mean():
    torch.manual_seed(2)
    out, tgt = torch.randn(2, 3, 4, 5), torch.randint(0, 3, (2, 4, 5))
    tgt[0, 0, 0] = 255
    w = torch.tensor([0.5, 2.0, 1.0])
    nll = -out.log_softmax(1).gather(1, tgt.clamp_max(2)[:, None])[:, 0]
    valid = tgt != 255
    ref = (w[tgt.clamp_max(2)] * nll)[valid].sum() / w[tgt.clamp_max(2)][valid].sum()
    assert torch.allclose(probe_loss(out, tgt, 'seg', class_weight=w), ref, atol=1e-6)


def test_pixel_sampled_probe_learns_and_is_deterministic():
    torch.manual_seed(0)
    labels = torch.randint(0, 4, (12, 8, 8)).repeat_interleave(4, 1).repeat_interleave(4, 2)  # 32x32 maps
    feats = F.one_hot(labels, 4).permute(0, 3, 1, 2).float() * 3
    kw = dict(num_classes=4, steps=200, lr=5e-2, dropout=0.0, seed=3)
    a = train_probe(feats, labels, 'seg', pixels=64, **kw)
    b = train_probe(feats, labels, 'seg', pixels=64, **kw)
    full = train_probe(feats, labels, 'seg', **kw)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    assert not torch.equal(a.conv.weight, full.conv.weight)  # 64 of 1024 pixels: another (noisier) estimate
    assert seg_metrics(predict_probe(a, feats, (32, 32), 'seg'), labels, 4)['acc'] > 90
    # pixels >= h * w: the full maps
    c = train_probe(feats, labels, 'seg', pixels=32 * 32, **kw)
    assert torch.equal(c.conv.weight, full.conv.weight)
    with pytest.raises(ValueError, match='pixels'):
        train_probe(feats, labels, 'seg', pixels=0, **kw)


def test_cam_masks_and_average_drop_increase():
    torch.manual_seed(0)
    cams = torch.randn(4, 5, 6)
    e = cam_masks(cams, (20, 24))
    assert e.shape == (4, 1, 20, 24)
    assert torch.allclose(e.amin((1, 2, 3)), torch.zeros(4)) and torch.allclose(e.amax((1, 2, 3)), torch.ones(4))

    w = torch.randn(3, 3)

    def score(x):  # class probabilities from the mean colour
        return torch.softmax(x.mean((2, 3)) @ w, 1)

    images = torch.rand(4, 3, 20, 24)
    classes = torch.tensor([0, 1, 2, 1])
    got = cam_drop_increase(score, images, cams, classes)
    y = score(images)[torch.arange(4), classes].numpy().astype(np.float64)
    o = score(images * e)[torch.arange(4), classes].numpy().astype(np.float64)
    assert got['ad'] == pytest.approx(100 * np.mean(np.maximum(0, y - o) / y), rel=1e-6)
    assert got['ai'] == pytest.approx(100 * np.mean(o > y))
    # a CAM that keeps the whole image drops nothing
    keep = cam_drop_increase(score, images, torch.ones(4, 5, 6), classes, fill=torch.zeros(1, 3, 1, 1))
    assert keep['ad'] == pytest.approx(0.0, abs=1e-9) and keep['ai'] == 0.0
    with pytest.raises(ValueError, match='must share N'):
        cam_drop_increase(score, images, cams[:2], classes)
