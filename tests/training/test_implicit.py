"""Implicit FeatUp (featup_plugin.training.implicit): Fourier inputs, PCA, fitting, any-resolution answers, files."""

import math

import pytest
import torch
import torch.nn as nn

from featup_plugin.training.implicit import ImplicitFeatUp, fit_implicit, fit_pca, fourier_features


def _backbone():
    """A frozen stride-8 'backbone' with 12 channels."""
    torch.manual_seed(3)
    net = nn.Sequential(nn.Conv2d(3, 12, 8, 8), nn.GELU(), nn.Conv2d(12, 12, 1)).eval()
    for p in net.parameters():
        p.requires_grad = False
    return net


def _image(size=32):
    from featup_plugin.data.synthetic import generate_scene
    from featup_plugin.upsamplers import IMAGENET_MEAN, IMAGENET_STD

    rgb = torch.from_numpy(generate_scene(7, (size, size))[0]).permute(2, 0, 1).float() / 255
    return ((rgb - torch.tensor(IMAGENET_MEAN).view(3, 1, 1)) / torch.tensor(IMAGENET_STD).view(3, 1, 1))[None]


def test_fourier_features_layout():
    img = torch.rand(1, 3, 4, 6)
    freqs = torch.exp(torch.linspace(-2, 10, 30))
    f = fourier_features(img, freqs)
    assert f.shape == (1, 303, 4, 6)
    x = (torch.arange(6) + 0.5) / 6 * 2 - 1
    torch.testing.assert_close(f[0, 7, 2], torch.sin(freqs[7] * x))  # input 0 (x), sin, frequency 7
    torch.testing.assert_close(f[0, 30 + 7, :, 3], torch.cos(freqs[7] * x[3]).expand(4))  # cos block
    torch.testing.assert_close(f[0, -3:], img[0])  # raw colour last
    with pytest.raises(ValueError, match='one RGB image'):
        fourier_features(torch.rand(2, 3, 4, 4), freqs)


def test_fit_pca_recovers_a_low_rank_subspace():
    basis = torch.linalg.qr(torch.randn(10, 3))[0]
    samples = torch.randn(200, 3) @ basis.T + 5
    mean, comps = fit_pca(samples, 3)
    torch.testing.assert_close(comps.T @ comps, torch.eye(3), atol=1e-5, rtol=0)
    rec = (samples - mean) @ comps @ comps.T + mean
    torch.testing.assert_close(rec, samples, atol=1e-4, rtol=0)
    assert fit_pca(samples, 50)[1].shape == (10, 10)
    with pytest.raises(ValueError, match='samples'):
        fit_pca(torch.randn(1, 4), 2)


def test_fit_reduces_the_loss_and_answers_at_any_resolution(tmp_path):
    img, net = _image(32), _backbone()
    kwargs = dict(views=2, max_pad=4, pca_dim=8, pca_views=6, downsampler='attention', hidden=32, lr=1e-2, seed=0)
    model, losses = fit_implicit(img, net, steps=50, **kwargs)
    assert len(losses) == 50 and all(math.isfinite(v) for v in losses)
    assert sum(losses[-5:]) / 5 < sum(losses[:5]) / 5 - 0.2, losses
    assert model.pca_dim == 8 and model.feat_dim == 12
    a, b = model.features(32), model.features((20, 44))
    assert a.shape == (1, 12, 32, 32) and b.shape == (1, 12, 20, 44)
    assert torch.isfinite(a).all() and torch.isfinite(b).all() and a.std() > 0
    # the fitted features, pooled back to the backbone's grid, are closer to its features than before fitting
    lr = net(img)
    untrained = fit_implicit(img, net, steps=0, **kwargs)[0].features(32)

    def err(f):
        return float((torch.nn.functional.adaptive_avg_pool2d(f, lr.shape[-2:]) - lr).square().mean())

    assert err(a) < 0.8 * err(untrained)

    path = str(tmp_path / 'x.implicit.pt')
    model.save(path, extra=dict(note='t'))
    again = ImplicitFeatUp.load(path)
    assert torch.equal(again.features((20, 44)), b) and again.extra == dict(note='t')
    torch.save({'a': torch.zeros(1)}, str(tmp_path / 'other.pt'))
    with pytest.raises(ValueError, match='not an implicit FeatUp file'):
        ImplicitFeatUp.load(str(tmp_path / 'other.pt'))


def test_fit_rejects_bad_input():
    with pytest.raises(ValueError, match='one image'):
        fit_implicit(torch.rand(2, 3, 16, 16), _backbone(), steps=1)
    with pytest.raises(ValueError, match='views'):
        fit_implicit(torch.rand(1, 3, 16, 16), _backbone(), steps=1, views=0)


def test_fast_forward_equals_the_module_forward_and_its_gradients():
    torch.manual_seed(0)
    img = torch.randn(1, 3, 10, 14, dtype=torch.float64)
    model = ImplicitFeatUp(
        img, torch.randn(12, dtype=torch.float64), torch.randn(12, 8, dtype=torch.float64), hidden=16
    ).double()
    with torch.no_grad():  # non-trivial norms, so folding their affine into the first layer is exercised
        for p in model.parameters():
            p.add_(0.3 * torch.randn_like(p))
    model.eval()
    fast = model((10, 14))
    slow = model.net(model.inputs_at((10, 14)))
    torch.testing.assert_close(fast, slow, rtol=1e-10, atol=1e-10)
    grads = []
    for out in (fast, slow):
        model.zero_grad()
        (out * torch.linspace(-1, 1, out.numel(), dtype=out.dtype).view_as(out)).sum().backward(retain_graph=True)
        grads.append([p.grad.clone() for p in model.parameters()])
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=1e-8, atol=1e-10)
    assert model((3, 5)).shape == (1, 8, 3, 5) and model(4).shape == (1, 8, 4, 4)
    # training mode: channel dropout (whole input / hidden channels) is active; without dropout it equals eval
    model.train()
    assert not torch.equal(model((10, 14)), model((10, 14)))
    for m in model.net:
        if isinstance(m, nn.Dropout2d):
            m.p = 0.0
    torch.testing.assert_close(model((10, 14)), slow, rtol=1e-10, atol=1e-10)


def test_view_bank_runs_the_backbone_only_for_the_pca_views_and_fit_size_is_the_render_size():
    img, net = _image(32), _backbone()
    calls = []

    def backbone(x):
        calls.append(tuple(x.shape))
        return net(x)

    renders = []
    orig = ImplicitFeatUp.forward

    def spy(self, size=None):
        out = orig(self, size)
        renders.append(tuple(out.shape[-2:]))
        return out

    kwargs = dict(views=3, max_pad=4, pca_dim=8, pca_views=7, hidden=32, lr=1e-2, seed=0, view_bank=True, fit_size=16)
    ImplicitFeatUp.forward = spy
    try:
        model, losses = fit_implicit(img, backbone, steps=40, **kwargs)
    finally:
        ImplicitFeatUp.forward = orig
    assert len(calls) == 7  # the PCA views only, not steps x views
    assert set(renders) == {(16, 16)}  # rendered at fit_size while fitting (kernel 16 / 4 tokens = 4)
    assert sum(losses[-5:]) / 5 < sum(losses[:5]) / 5 - 0.1, losses
    assert model.features((32, 48)).shape == (1, 12, 32, 48)  # still any resolution
    for bad in (0, (16,), (16, 0), 2.5):
        with pytest.raises(ValueError, match='fit_size'):
            fit_implicit(img, net, steps=1, fit_size=bad, pca_views=2, pca_dim=4, hidden=8)


@pytest.mark.slow
def test_fit_implicit_tool_cpu_preset(tmp_path):
    import os
    import subprocess
    import sys

    from PIL import Image

    from featup_plugin.data.synthetic import generate_scene

    Image.fromarray(generate_scene(3, (40, 40))[0]).save(tmp_path / 'scene.png')
    from tests import ROOT as root

    cmd = [
        sys.executable,
        os.path.join(root, 'tools', 'fit_implicit.py'),
        str(tmp_path / 'scene.png'),
        '--out-dir',
        str(tmp_path / 'out'),
        '--preset',
        'cpu',
        '--steps',
        '3',
        '--size',
        '32',
        '--pca-views',
        '4',
        '--model',
        'vit_small_patch8_224',
        '--model-kwargs',
        'depth=1',
        'embed_dim=32',
        'num_heads=2',
        '--quiet',
        '--device',
        'cpu',
    ]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=root)
    assert res.returncode == 0, res.stderr[-2000:]
    assert '3 steps x 4 views (view bank), fitted at 32 px' in res.stdout, res.stdout
    model = ImplicitFeatUp.load(str(tmp_path / 'out' / 'scene.implicit.pt'))
    assert model.extra['view_bank'] is True and model.extra['fit_size'] == 32 and model.extra['steps'] == 3
    assert model.features((20, 30)).shape == (1, 32, 20, 30)
