"""The probe benchmark's wiring (featup_plugin.evaluation.protocol, tools/benchmark_probe.py): every method runs,
numbers are finite and in range, the JSON schema, the same probe seed / data order for all, the JBU learns.
Tiny sizes: these check the plumbing, not which upsampler wins."""

import json
import math
import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

pytest.importorskip('timm', reason='timm is not installed')

from featup_plugin.evaluation import pretrain, protocol  # noqa: E402
from tests import ROOT  # noqa: E402

TINY = dict(embed_dim=32, depth=2, num_heads=2)
CFG = dict(
    image_size=48,
    num_train=3,
    num_val=2,
    upsampler_steps=4,
    upsampler_batch=2,
    upsampler_crop=32,
    views=2,
    max_pad=4,
    probe_steps=8,
    probe_batch=2,
    implicit_steps=2,
    implicit_views=2,
    implicit_pca_views=4,
    implicit_pca_dim=8,
    implicit_fit_size=16,
)


@pytest.fixture(scope='module')
def tiny_checkpoint(tmp_path_factory):
    res = pretrain.pretrain_backbone(
        num_images=4, size=64, crop=32, steps=2, batch_size=2, num_val=2, model_kwargs=TINY, log=None
    )
    path = str(tmp_path_factory.mktemp('ckpt') / 'tiny.pth')
    pretrain.save_pretrained(res, path)
    return path


@pytest.fixture(scope='module')
def tiny_results(tiny_checkpoint, tmp_path_factory):
    cfg = protocol.ProbeBenchConfig(seed=3, **CFG)
    return protocol.run_probe_benchmark(cfg, str(tmp_path_factory.mktemp('work')), tiny_checkpoint, log=None)


def test_all_methods_finite_and_in_range(tiny_results):
    methods = tiny_results['methods']
    assert list(methods) == list(protocol.METHODS)
    for name, rec in methods.items():
        assert set(rec) == {'seg', 'depth', 'cam'}, name
        assert set(rec['seg']) == {'miou', 'acc', 'bf'} and set(rec['depth']) == {'rmse', 'delta1'}
        assert set(rec['cam']) == {'ad', 'ai'}
        for group in rec.values():
            for key, v in group.items():
                assert math.isfinite(v), (name, key)
                assert (v >= 0) if key == 'rmse' else (0 <= v <= 100), (name, key, v)
    assert set(tiny_results['deltas_vs_bilinear']) == set(protocol.METHODS) - {'bilinear'}


def test_json_schema_and_settings(tiny_results):
    back = json.loads(json.dumps(tiny_results))
    assert {'settings', 'pretrained', 'data', 'upsamplers', 'probe', 'methods', 'deltas_vs_bilinear', 'seconds'} <= set(
        back
    )
    assert back['settings']['seed'] == 3 and back['settings']['methods'] == list(protocol.METHODS)
    assert back['pretrained']['stride'] == 8 and back['data']['num_train'] == 3
    assert set(back['upsamplers']) == set(protocol.LEARNED)
    table = protocol.format_table(back)
    for name in protocol.METHODS:
        assert f'| {name} |' in table
    assert 'Δ vs bilinear' in table and '| A.I |' in table.splitlines()[0] + ' |'


def test_same_probe_budget_seed_and_data_order_for_all(tiny_results):
    probe = tiny_results['probe']
    keys = ('seed', 'steps', 'batch_size', 'num_train', 'order_digest')
    first = {k: probe['lowres'][k] for k in keys}
    assert first['order_digest'] == protocol.probe_order_digest(3, 8, 2, 3)
    for name in protocol.METHODS:
        assert {k: probe[name][k] for k in keys} == first, name
    assert probe['lowres']['feature_size'] == [6, 6]
    for name in protocol.METHODS[1:]:
        assert probe[name]['feature_size'] == [48, 48], name
    # train_probe seeds the probe's init and batch order from this seed alone: another seed, another order
    assert protocol.probe_order_digest(3, 8, 2, 3) != protocol.probe_order_digest(3, 8, 2, 4)


def test_probe_pixels_and_diagnostics_recorded(tiny_results):
    probe = tiny_results['probe']
    assert probe['lowres']['pixels_per_image'] == 'all'  # 6x6 < 2048: full maps
    assert all(probe[m]['pixels_per_image'] == 2048 for m in protocol.METHODS[1:])  # 48x48 = 2304 > 2048
    diag = dict(tiny_results['diagnostics'])
    assert len(diag.pop('jbu_kernels')) == 3  # one record per JBU stage
    assert set(diag) == set(protocol.METHODS) - {'lowres'}
    for rec in diag.values():
        assert rec['edge_pixels'] > 0 and rec['edge_ratio'] > 0


def test_edge_alignment_prefers_features_that_change_at_label_edges():
    labels = torch.zeros(1, 16, 16, dtype=torch.long)
    labels[0, :, 8:] = 5  # wire (a thin class) on the right half
    step = (labels[:, None].float() > 0).float().repeat(1, 3, 1, 1)  # changes exactly at the label edge
    smooth = F.avg_pool2d(step, 7, stride=1, padding=3, count_include_pad=False)  # the same edge, blurred
    sharp, blurred = protocol.edge_alignment(step, labels), protocol.edge_alignment(smooth, labels)
    assert sharp['edge_pixels'] == 16
    # every change of the step is on the edge: ratio = all pixels / edge pixels = 256 / 16
    assert math.isclose(sharp['edge_ratio'], 16.0, rel_tol=1e-6)
    assert math.isclose(sharp['thin_edge_ratio'], 16.0, rel_tol=1e-6)
    assert 1.0 < blurred['edge_ratio'] < sharp['edge_ratio']
    with pytest.raises(ValueError, match='labels size'):
        protocol.edge_alignment(step[..., :8], labels)


def test_jbu_kernel_stats_see_an_edge_aware_range_kernel():
    torch.manual_seed(0)
    labels = torch.zeros(2, 32, 32, dtype=torch.long)
    labels[:, :, 16:] = 6  # pole on the right half
    images = torch.where(labels[:, None] > 0, -1.0, 1.0).repeat(1, 3, 1, 1)
    net = protocol.JBUStack(4, num_stages=3).eval()
    with torch.no_grad():
        for stage in net.stages:  # a flat range kernel: logits 0, the spatial kernel alone
            for m in stage.range_proj:
                if isinstance(m, torch.nn.Conv2d):
                    m.weight.zero_()
                    m.bias.zero_()
    flat = protocol.jbu_kernel_stats(net, images, labels, (4, 4))
    assert [r['size'] for r in flat] == [[8, 8], [16, 16], [32, 32]]
    for r in flat:
        assert math.isclose(r['entropy_all'], r['entropy_spatial'], rel_tol=1e-5)
        assert math.isclose(r['same_label_edge'], r['same_label_spatial_edge'], rel_tol=1e-5)
        assert r['same_label_edge'] < 1.0  # the spatial kernel reaches across the edge
    with torch.no_grad():
        for stage in net.stages:  # keys = GELU(5 * colour): pixels on the bright side attend to their own side
            conv1, conv2 = stage.range_proj[0], stage.range_proj[3]
            conv1.weight[:3, :, 0, 0] = 5 * torch.eye(3)
            conv2.weight[:3, :3, 0, 0] = torch.eye(3)
    sharp = protocol.jbu_kernel_stats(net, images, labels, (4, 4))
    for r in sharp:
        # the edge pixels (left of the edge, bright side) keep their kernel mass on their own label
        assert r['same_label_edge'] > r['same_label_spatial_edge'] + 0.1
        assert r['entropy_edge'] < r['entropy_spatial']
        assert r['same_label_thin_edge'] == r['same_label_edge']  # every edge borders the pole


def test_jbu_is_trained_by_the_multiview_loss(tiny_checkpoint):
    backbone, _, _ = pretrain.load_pretrained(tiny_checkpoint)
    imgs, _ = pretrain.pretraining_scenes(4, 48, seed=9)
    x = pretrain.normalize_images(torch.from_numpy(imgs))
    cfg = protocol.ProbeBenchConfig(**dict(CFG, upsampler_steps=30))
    torch.manual_seed(cfg.seed)
    jbu0 = protocol.JBUStack(32, num_stages=3)  # train_upsampler's initial weights
    net, losses = protocol.train_upsampler('jbu', lambda im: backbone(im)[0], x, 32, 8, cfg)
    assert len(losses) == 30 and all(math.isfinite(v) for v in losses)
    assert sum(losses[-5:]) / 5 < sum(losses[:5]) / 5
    changed = [not torch.equal(p, p0) for p, p0 in zip(net.state_dict().values(), jbu0.state_dict().values())]
    assert any(changed) and not any(p.requires_grad for p in net.parameters())


def test_resize_conv_starts_as_repeated_bilinear():
    net = protocol.ResizeConv(4, num_stages=2)
    x = torch.randn(1, 4, 5, 5)
    ref = F.interpolate(F.interpolate(x, size=(10, 10), mode='bilinear'), size=(20, 20), mode='bilinear')
    assert torch.allclose(net(x, (20, 20)), ref, atol=1e-6)
    with pytest.raises(ValueError, match='dim and num_stages'):
        protocol.ResizeConv(0)


def test_upsample_methods_and_bad_inputs():
    lr, img = torch.randn(1, 4, 3, 3), torch.randn(1, 3, 24, 24)
    assert protocol.upsample('lowres', lr, img).shape == (1, 4, 3, 3)
    for m in ('bilinear', 'bicubic'):
        assert protocol.upsample(m, lr, img).shape == (1, 4, 24, 24)
    with pytest.raises(ValueError, match='fitted per image'):
        protocol.upsample('implicit', lr, img)
    with pytest.raises(ValueError, match='kind must be one of'):
        protocol.train_upsampler('bilinear', None, img, 4, 8, protocol.ProbeBenchConfig())


@pytest.mark.parametrize(
    'change, match',
    [
        (dict(num_train=1), 'num_train'),
        (dict(image_size=60), 'multiple of the patch size'),
        (dict(upsampler_crop=256), 'upsampler_crop'),
        (dict(methods=('jbu', 'nearest')), 'methods'),
        (dict(probe_lr=-1.0), 'probe_lr'),
        (dict(seed=-1), 'seed'),
        (dict(implicit_downsampler='max'), 'implicit_downsampler'),
    ],
)
def test_bad_config(change, match):
    with pytest.raises(ValueError, match=match):
        protocol.ProbeBenchConfig(**change).validate()


def test_cli_rejects_bad_input(tmp_path, capsys):
    sys.path.insert(0, os.path.join(ROOT, 'tools'))
    try:
        import benchmark_probe
    finally:
        sys.path.pop(0)
    for argv, match in (
        (['--out', str(tmp_path), '--quick'], 'is a directory'),
        (['--out', str(tmp_path / 'r.json'), '--seed', '-2'], '--seed must be >= 0'),
        (['--out', str(tmp_path / 'r.json'), '--methods', 'jbu,foo'], '--methods must be'),
        (['--out', str(tmp_path / 'r.json'), '--threads', '0'], '--threads must be >= 1'),
        (['--out', str(tmp_path / 'r.json'), '--upsampler-steps', '0'], '--upsampler-steps must be >= 1'),
        (['--out', str(tmp_path / 'r.json'), '--checkpoint', str(tmp_path)], 'is a directory'),
        (['--seed', '0'], '--out'),
    ):
        with pytest.raises(SystemExit):
            benchmark_probe.parse_args(argv)
        assert match in capsys.readouterr().err
    assert benchmark_probe.parse_args(['--out', 'r.json', '--upsampler-steps', '400']).upsampler_steps == 400


@pytest.mark.slow
def test_cli_quick_pretrains_when_missing(tmp_path):
    out, ckpt = tmp_path / 'r.json', tmp_path / 'ckpt.pth'
    res = subprocess.run(
        [sys.executable, 'tools/benchmark_probe.py', '--quick', '--out', str(out), '--checkpoint', str(ckpt),
         '--work-dir', str(tmp_path / 'work'), '--methods', 'lowres,bilinear,jbu', '--upsampler-steps', '5'],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
        env=dict(os.environ, PYTHONPATH=ROOT),
    )  # fmt: skip
    assert res.returncode == 0, res.stderr[-2000:]
    assert ckpt.is_file() and 'is missing: pretraining' in res.stdout
    data = json.loads(out.read_text())
    assert list(data['methods']) == ['lowres', 'bilinear', 'jbu'] and data['settings']['preset'] == 'quick'
    assert data['settings']['upsampler_steps'] == 5 and len(data['upsamplers']['jbu']['losses']) == 5
    assert '| jbu |' in res.stdout


def test_per_class_tool_reproduces_the_run(tiny_results, tmp_path, capsys):
    # tools/analysis_tools/probe_per_class.py reloads the saved upsamplers and retrains the seg probes: the
    # recomputed mIoU must be the run's
    import importlib.util

    path = str(tmp_path / 'res.json')
    with open(path, 'w') as f:
        json.dump(tiny_results, f)
    spec = importlib.util.spec_from_file_location(
        'probe_per_class', os.path.join(ROOT, 'tools', 'analysis_tools', 'probe_per_class.py')
    )
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    assert tool.main([path, '--methods', 'bilinear,jbu']) == 0
    out = capsys.readouterr().out
    assert out.count('jbu stage ') == 3
    rows = [line for line in out.splitlines() if line.startswith('| bilinear |') or line.startswith('| jbu |')]
    assert len(rows) == 2
    for row in rows:
        recomputed, run = (float(v) for v in row.split('|')[-3].split('/'))
        assert recomputed == pytest.approx(run, abs=1e-6), row
