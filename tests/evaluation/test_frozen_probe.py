"""FeatUp's probe protocol on COCO-Stuff-27 (featup_plugin.evaluation.frozen_probe, tools/train_probe.py): the
scale-and-shift-invariant depth loss, the streamed probe learns, metrics agree with the in-memory ones, and the
CLI runs one iteration per task on a generated COCO-Stuff layout with a hub model."""

import json
import math

import pytest
import torch

from featup_plugin.evaluation import frozen_probe as fp
from featup_plugin.evaluation.probe import seg_metrics
from tests.data.test_cocostuff import write_fake_cocostuff


def test_ssi_loss_ignores_scale_and_shift():
    torch.manual_seed(0)
    t = torch.rand(2, 8, 9) + 0.5
    assert fp.ssi_loss(3.0 * t - 2.0, t) < 1e-10
    assert fp.ssi_loss(-t, t) < 1e-10  # a negative scale is a scale too: aligned exactly
    assert fp.ssi_loss(torch.rand(2, 8, 9), t) > 1e-3
    mask = torch.zeros_like(t, dtype=torch.bool)
    mask[:, :4] = True
    bad = t.clone()
    bad[:, 4:] = 100.0  # outside the mask: no effect
    assert fp.ssi_loss(2.0 * bad, t, mask) < 1e-10
    with pytest.raises(ValueError, match='ssi_align'):
        fp.ssi_align(t[0], t[0])


class _Toy(torch.nn.Module):
    """An UpsampledBackbone stand-in: the 'features' are the image's channels at stride 4 (upsampler: nearest)."""

    def __init__(self):
        super().__init__()
        self.model = torch.nn.AvgPool2d(4)
        self.upsampler = torch.nn.Identity()

    def forward(self, image, output_size=None):
        return torch.nn.functional.interpolate(self.model(image), size=output_size, mode='nearest')


def _loader(n=8, size=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n // 2):
        label = torch.randint(0, 3, (2, size // 4, size // 4), generator=g)
        label = label.repeat_interleave(4, 1).repeat_interleave(4, 2)
        img = torch.nn.functional.one_hot(label, 3).permute(0, 3, 1, 2).float() * 4.0
        out.append(dict(img=img, label=label, depth=label.float() * 2.0 + 1.0))
    return out


def test_probe_learns_and_metrics_match_in_memory_ones():
    loader = _loader()
    fn = fp.frozen_features(_Toy(), 'jbu')
    probe = fp.train_frozen_probe(fn, loader, 'seg', num_classes=3, iters=60, lr=5e-2)
    m = fp.evaluate_frozen_probe(fn, probe, loader, 'seg', num_classes=3)
    assert m['miou'] > 99 and m['acc'] > 99
    with torch.no_grad():
        pred = torch.cat([probe(fn(b['img'])).argmax(1) for b in loader])
    ref = seg_metrics(pred, torch.cat([b['label'] for b in loader]), 3)
    for k in ('miou', 'acc', 'bf'):
        assert math.isclose(m[k], ref[k], abs_tol=1e-9), k
    d_probe = fp.train_frozen_probe(fn, loader, 'depth', iters=150, lr=5e-2)
    d = fp.evaluate_frozen_probe(fn, d_probe, loader, 'depth')
    assert d['rmse'] < 0.1 and d['delta1'] > 99
    low = fp.frozen_features(_Toy(), 'lowres')  # trained at stride 4, evaluated at the label size
    assert (
        fp.evaluate_frozen_probe(
            low, fp.train_frozen_probe(low, loader, 'seg', 3, iters=60, lr=5e-2), loader, 'seg', 3
        )['miou']
        > 50
    )
    untrained = fp.train_frozen_probe(fn, loader, 'depth', iters=1, lr=1e-9)
    assert fp.evaluate_frozen_probe(fn, untrained, loader, 'depth')['rmse'] > d['rmse']


def test_bad_inputs():
    fn = fp.frozen_features(_Toy(), 'bilinear')
    with pytest.raises(ValueError, match='method'):
        fp.frozen_features(_Toy(), 'nearest')
    with pytest.raises(TypeError, match='UpsampledBackbone'):
        fp.frozen_features(torch.nn.Identity(), 'jbu')
    with pytest.raises(ValueError, match='task'):
        fp.train_frozen_probe(fn, _loader(), 'cls')
    with pytest.raises(KeyError, match='depth'):
        fp.train_frozen_probe(fn, [dict(img=torch.zeros(1, 3, 8, 8))], 'depth', iters=1)
    with pytest.raises(ValueError, match='no batch'):
        fp.train_frozen_probe(fn, [], 'seg', iters=1)


@pytest.mark.parametrize('task,method', [('seg', 'jbu'), ('depth', 'bilinear')])
def test_cli_one_iteration_on_generated_cocostuff(tmp_path, task, method):
    pytest.importorskip('timm', reason='timm is not installed')
    import importlib.util
    import os

    from tests import ROOT

    root = str(tmp_path / 'cocostuff')
    depth = write_fake_cocostuff(root, n_train=2, n_val=2)
    spec = importlib.util.spec_from_file_location('train_probe', os.path.join(ROOT, 'tools', 'train_probe.py'))
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    out = str(tmp_path / 'r.json')
    args = ['--data-root', root, '--model', 'dino16', '--no-pretrained', '--task', task, '--method', method]
    args += ['--size', '32', '--iters', '1', '--workers', '0', '--out', out]
    if task == 'depth':
        args += ['--depth-root', depth]
    result = tool.main(args)
    with open(out) as f:
        saved = json.load(f)
    keys = ('miou', 'acc', 'bf') if task == 'seg' else ('rmse', 'delta1')
    assert set(saved[task]) == set(keys) and saved[task] == result[task]
    assert all(math.isfinite(v) for v in saved[task].values())
    assert saved['settings']['n_train'] == 2 and saved['settings']['method'] == method
    with pytest.raises(SystemExit):
        tool.parse_args(['--data-root', root, '--task', 'depth'])  # depth without --depth-root
