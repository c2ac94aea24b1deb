"""The evaluation protocol's pretrained backbone (featup_plugin.evaluation.pretrain, tools/pretrain_backbone.py)."""

import os
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F

pytest.importorskip('timm', reason='timm is not installed')

from featup_plugin.data.synthetic import CLASSES, scene_seed  # noqa: E402
from featup_plugin.evaluation import pretrain  # noqa: E402
from featup_plugin.featurizers.timm_vit import TimmViTFeatures  # noqa: E402
from tests import ROOT  # noqa: E402

TINY = dict(embed_dim=32, depth=2, num_heads=2)


def test_pretraining_scenes_are_disjoint_from_the_dataset_splits():
    pre = {pretrain.pretrain_seed(0, i) for i in range(200)}
    split = {scene_seed(0, s, i) for s in ('train', 'val') for i in range(200)}
    assert len(pre) == 200 and not pre & split
    imgs, labs = pretrain.pretraining_scenes(3, 64, seed=1)
    assert imgs.shape == (3, 64, 64, 3) and labs.shape == (3, 64, 64) and imgs.dtype == np.uint8


def test_crop_targets_are_the_classes_present():
    labs = torch.randint(0, 10, (5, 8, 8), dtype=torch.uint8)
    labs[0] = 3
    labs[1, :, :4] = 255  # ignore values are no class
    t = pretrain.crop_targets(labs, 10)
    for b in range(5):
        present = set(np.unique(labs[b].numpy()).tolist()) - {255}
        assert set(torch.nonzero(t[b]).flatten().tolist()) == present
    assert pretrain.crop_targets(labs, 10, min_pixels=65)[0].tolist() == [0.0] * 10  # 64 pixels of class 3


def test_cam_classifier_is_a_linear_classifier_on_pooled_features():
    torch.manual_seed(0)
    clf = pretrain.CamClassifier(6, 4)
    f = torch.randn(2, 6, 5, 7, dtype=torch.float64)
    clf = clf.double()
    want = F.linear(f.mean((2, 3)), clf.conv.weight.view(4, 6), clf.conv.bias)
    torch.testing.assert_close(clf(f), want)
    assert clf.cam(torch.randn(2, 6, 40, 56, dtype=torch.float64)).shape == (2, 4, 40, 56)
    with pytest.raises(ValueError, match=r'features must be \[B, 6, h, w\]'):
        clf(torch.randn(2, 5, 3, 3, dtype=torch.float64))
    with pytest.raises(ValueError, match='must be >= 1'):
        pretrain.CamClassifier(0, 3)


def test_pretraining_learns_and_the_file_loads_everywhere(tmp_path):
    result = pretrain.pretrain_backbone(
        num_images=16, size=64, crop=32, steps=20, batch_size=8, lr=3e-3, num_val=8, model_kwargs=TINY, log=None
    )
    meta = result['meta']
    assert meta['final_loss'] < meta['first_loss']  # BCE falls (at least to the class frequencies)
    assert set(meta['val_ap']) == set(CLASSES) and 'disjoint' in meta['trained_on']
    path = str(tmp_path / 'vit.pth')
    pretrain.save_pretrained(result, path)
    x = torch.randn(2, 3, 48, 40)
    with torch.no_grad():
        want = result['backbone'].eval()(x)[0]
        backbone, classifier, meta2 = pretrain.load_pretrained(path)
        torch.testing.assert_close(backbone(x)[0], want)
        torch.testing.assert_close(classifier(want), result['classifier'](want))
        # the project's ViT extractor loads the file as pretrained=path with the meta's architecture
        other = TimmViTFeatures(meta['model_name'], model_kwargs=meta['model_kwargs'], pretrained=path).eval()
        torch.testing.assert_close(other(x)[0], want)
    assert meta2 == meta and not any(p.requires_grad for p in backbone.parameters())
    bad = tmp_path / 'bad.pth'
    torch.save({'state_dict': {}}, bad)
    with pytest.raises(ValueError, match='not a file written by save_pretrained'):
        pretrain.load_pretrained(str(bad))


def test_bad_arguments():
    with pytest.raises(ValueError, match='steps must be a positive int'):
        pretrain.pretrain_backbone(steps=0, log=None)
    with pytest.raises(ValueError, match='crop .* must not exceed'):
        pretrain.pretrain_backbone(size=64, crop=96, log=None)


@pytest.mark.slow
def test_cli_quick(tmp_path):
    out = tmp_path / 'p.pth'
    res = subprocess.run(
        [sys.executable, os.path.join(ROOT, 'tools', 'pretrain_backbone.py'), '--quick', '--out', str(out)],
        capture_output=True,
        text=True,
        timeout=600,
        env=dict(os.environ, PYTHONPATH=ROOT),
    )
    assert res.returncode == 0, res.stderr[-3000:]
    assert out.exists() and 'val_map' in res.stdout and 'disjoint from every dataset split' in res.stdout
