"""Implicit FeatUp (featup_plugin.training.implicit): Fourier inputs, PCA, fitting, any-resolution answers, files."""

import math

import pytest
import torch
import torch.nn as nn

from featup_plugin.training.implicit import (
    ImplicitFeatUp,
    fit_implicit,
    fit_pca,
    fourier_features,
    implicit_kernel,
    implicit_loss,
    position_grid,
)

from . import featup_reference as ref


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


def test_fourier_features_layout_grids_and_phases():
    img = torch.rand(1, 3, 4, 6, dtype=torch.float64)
    freqs = torch.exp(torch.linspace(-2, 10, 30, dtype=torch.float64))
    f = fourier_features(img, freqs)
    assert f.shape == (1, 303, 4, 6)
    x = torch.linspace(-1, 1, 6, dtype=torch.float64)  # FeatUp's grid: first and last pixel at -1 and 1
    y = torch.linspace(-1, 1, 4, dtype=torch.float64)
    torch.testing.assert_close(f[0, 7, 2], torch.sin(freqs[7] * x))  # input 0 (x), sin, frequency 7
    torch.testing.assert_close(f[0, 30 + 7, :, 3], torch.cos(freqs[7] * x[3]).expand(4))  # its cos block
    torch.testing.assert_close(f[0, 60 + 2, :, 1], torch.sin(freqs[2] * y))  # input 1 (y)
    torch.testing.assert_close(f[0, 4 * 60 + 30 + 5], torch.cos(freqs[5] * img[0, 2]))  # input 4 (b), cos
    torch.testing.assert_close(f[0, -3:], img[0])  # raw colour last
    centres = fourier_features(img, freqs, grid='centres')
    xc = (torch.arange(6, dtype=torch.float64) + 0.5) / 6 * 2 - 1
    torch.testing.assert_close(centres[0, 7, 2], torch.sin(freqs[7] * xc))
    phases = torch.randn(2, 5, 30, dtype=torch.float64)
    g = fourier_features(img, freqs, phases)
    torch.testing.assert_close(g[0, 7, 2], torch.sin(freqs[7] * x + phases[0, 0, 7]))
    torch.testing.assert_close(g[0, 3 * 60 + 30 + 9], torch.cos(freqs[9] * img[0, 1] + phases[1, 3, 9]))
    assert position_grid(1, 3).shape == (1, 2, 1, 3)
    with pytest.raises(ValueError, match='one RGB image'):
        fourier_features(torch.rand(2, 3, 4, 4), freqs)
    with pytest.raises(ValueError, match='phases'):
        fourier_features(img, freqs, torch.zeros(2, 5, 29))
    with pytest.raises(ValueError, match='grid'):
        position_grid(2, 2, 'edges')


def test_colour_is_min_max_scaled_with_the_fitted_images_range_at_every_size():
    img = torch.randn(1, 3, 12, 10, dtype=torch.float64)
    model = ImplicitFeatUp(img, torch.zeros(4, dtype=torch.float64), torch.eye(4, 2, dtype=torch.float64)).double()
    lo = img.amin(dim=(2, 3), keepdim=True)
    hi = img.amax(dim=(2, 3), keepdim=True)
    torch.testing.assert_close(model.colour_at((12, 10)), (img - lo) / (hi - lo) - 0.5)  # FeatUp's MinMaxScaler
    assert float(model.colour_at((12, 10)).amin()) == pytest.approx(-0.5) and float(
        model.colour_at((12, 10)).amax()
    ) == pytest.approx(0.5)
    small = torch.nn.functional.interpolate(img, size=(6, 5), mode='bilinear', align_corners=False, antialias=True)
    torch.testing.assert_close(model.colour_at((6, 5)), (small - lo) / (hi - lo) - 0.5)  # the same affine map
    legacy = ImplicitFeatUp(img, torch.zeros(4), torch.eye(4, 2), colour='imagenet')
    assert torch.equal(legacy.colour_at((12, 10)), img)
    flat = ImplicitFeatUp(torch.ones(1, 3, 4, 4), torch.zeros(4), torch.eye(4, 2))
    assert torch.isfinite(flat.colour_at((4, 4))).all()  # a constant channel: span clamped at 1e-4
    for bad in (dict(colour='rgb'), dict(grid='x'), dict(dropout=1.0)):
        with pytest.raises(ValueError):
            ImplicitFeatUp(img, torch.zeros(4), torch.eye(4, 2), **bad)


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


def test_implicit_loss_terms_equal_featups_formulas_with_the_magnitude_channel_through_jitter_and_downsampler():
    """float64, fixed tensors: every term against FeatUp's formulas re-derived in tests/training/featup_reference.py
    (the magnitude |F| is channel 0 of what is jittered and downsampled; overlapping attention windows)."""
    from featup_plugin.training import JitterParams, UncertaintyHead
    from featup_plugin.upsamplers import AttentionDownsampler

    g = torch.Generator().manual_seed(0)
    hr = torch.randn(1, 3, 24, 24, generator=g, dtype=torch.float64)
    target = torch.randn(3, 3, 3, 3, generator=g, dtype=torch.float64)
    px = [(4, 0, 0, False), (4, 7, 3, True), (2, 1, 4, True)]  # pad, y, x, flip (no zoom: exact pixels)
    views = [JitterParams.from_pixels((24, 24), pad=p, y=y, x=x, flip=f) for p, y, x, f in px]
    down = AttentionDownsampler(4, kernel_size=9).double().eval()  # 3x3 windows of 9 px every 7 px
    scale_net = UncertaintyHead(3).double()
    with torch.no_grad():
        for p in list(down.parameters()) + list(scale_net.parameters()):
            p.copy_(0.5 * torch.randn(p.shape, generator=g, dtype=torch.float64))
    terms = implicit_loss(hr, views, target, down, scale_net, mag_weight=0.001, mag_tv_weight=0.05, blur_weight=0.1)
    assert set(terms) == {'loss_rec', 'loss_mag', 'loss_mag_tv', 'loss_blur'}

    both = torch.cat([ref.magnitude(hr), hr], 1)
    lin = down.attention_net[1]
    pred = torch.cat(
        [
            ref.attention_downsample(ref.pad_crop_flip(both, *v), 9, (3, 3), lin.weight[0], lin.bias[0], down.w, down.b)
            for v in px
        ]
    )
    s = ref.scale(target, scale_net.net.weight, scale_net.net.bias)
    expect = dict(
        loss_rec=ref.uncertainty(pred[:, 1:], target, s),
        loss_mag=0.001 * (pred[:, :1] - ref.magnitude(target)).square().mean(),
        loss_mag_tv=0.05 * ref.total_variation(ref.magnitude(hr)),
        loss_blur=0.1 * (ref.gaussian_blur_5x5(hr) - hr).square().mean(),
    )
    for k, v in expect.items():
        torch.testing.assert_close(terms[k].detach(), torch.as_tensor(v, dtype=torch.float64), rtol=1e-10, atol=1e-14)
    # the old objective penalised mean |F|^2 and the TV of |F|^2: far from these
    assert abs(float(terms['loss_mag'].detach()) - 0.001 * float(hr.square().sum(1).mean())) > 1e-4
    no_weights = implicit_loss(hr, views, target, down, None, 0, 0, 0)
    assert set(no_weights) == {'loss_rec'}
    torch.testing.assert_close(no_weights['loss_rec'].detach(), (pred[:, 1:] - target).square().mean())
    with pytest.raises(ValueError, match='implicit_loss'):
        implicit_loss(hr, views[:2], target, down, scale_net)


def test_implicit_kernel_is_featups_29_px_window_at_stride_16():
    from featup_plugin.upsamplers.downsamplers import window_layout

    assert implicit_kernel(16) == 29 and implicit_kernel(8) == 15 and implicit_kernel(14) == 25
    assert window_layout((224, 224), (14, 14), 29) == (15, 15)  # FeatUp: overlapping windows every 15 px
    assert implicit_kernel(0.1) == 1


def test_fit_reduces_the_loss_and_answers_at_any_resolution(tmp_path):
    img, net = _image(32), _backbone()
    kwargs = dict(
        views=2, max_pad=4, pca_dim=8, pca_views=6, bank_views=200, downsampler='attention', hidden=32, seed=0
    )
    model, losses = fit_implicit(img, net, steps=50, **kwargs)
    assert len(losses) == 50 and all(math.isfinite(v) for v in losses)
    assert sum(losses[-5:]) < 0.5 * sum(losses[:5]), losses
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
    with pytest.raises(ValueError, match='mag_weight'):
        fit_implicit(torch.rand(1, 3, 16, 16), _backbone(), steps=1, mag_weight=-1)
    with pytest.raises(ValueError, match='bank_views'):
        fit_implicit(torch.rand(1, 3, 16, 16), _backbone(), steps=1, bank_views=-3)


@pytest.mark.parametrize(
    'options', [dict(), dict(learn_phases=False, colour='imagenet', grid='centres')], ids=['featup', 'no-phases']
)
def test_fast_forward_equals_the_module_forward_and_its_gradients(options):
    torch.manual_seed(0)
    img = torch.randn(1, 3, 10, 14, dtype=torch.float64)
    model = ImplicitFeatUp(
        img, torch.randn(12, dtype=torch.float64), torch.randn(12, 8, dtype=torch.float64), hidden=16, **options
    ).double()
    assert (model.phases is not None) == options.get('learn_phases', True)
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
    assert len(grads[0]) == len(list(model.net.parameters())) + (model.phases is not None)
    for a, b in zip(*grads):
        assert a.abs().sum() > 0  # every parameter (the phases too) gets a gradient
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
        calls.append(x.shape[0])
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
    assert sum(calls) == 7  # the PCA views only, not steps x views
    assert set(renders) == {(16, 16)}  # rendered at fit_size while fitting
    assert sum(losses[-5:]) / 5 < sum(losses[:5]) / 5 - 0.1, losses
    assert model.features((32, 48)).shape == (1, 12, 32, 48)  # still any resolution
    for bad in (0, (16,), (16, 0), 2.5):
        with pytest.raises(ValueError, match='fit_size'):
            fit_implicit(img, net, steps=1, fit_size=bad, pca_views=2, pca_dim=4, hidden=8)


def test_featups_bank_of_views_and_fresh_views():
    img, net = _image(32), _backbone()
    calls = []

    def backbone(x):
        calls.append(x.shape[0])
        return net(x)

    kwargs = dict(views=3, max_pad=4, pca_dim=8, pca_views=5, hidden=16, seed=0, batch_views=4)
    fit_implicit(img, backbone, steps=6, bank_views=30, **kwargs)
    assert sum(calls) == 30 and max(calls) == 4  # 30 views up front (the first 5 fit the PCA), 4 per call
    calls.clear()
    fit_implicit(img, backbone, steps=6, bank_views=0, **kwargs)
    assert calls == [4, 1] + [3] * 6  # the PCA views, then fresh views every step (one call per step)
    calls.clear()
    fit_implicit(img, backbone, steps=6, bank_views=30, view_bank=False, **kwargs)
    assert sum(calls) == 5 + 18  # view_bank overrides bank_views


def test_legacy_files_load_with_their_encoding():
    """Files of the first format (ImageNet colour, pixel-centre grid, no phases) still load and render alike."""
    img = _image(32)
    model = ImplicitFeatUp(
        img, torch.zeros(12), torch.eye(12, 4), hidden=8, colour='imagenet', grid='centres', learn_phases=False
    ).eval()
    legacy = dict(
        format='featup_plugin.implicit/1',
        config=dict(num_freqs=30, min_freq=-2.0, max_freq=10.0, hidden=8, dropout=0.2),
        net=model.net.state_dict(),
        image=img,
        mean=model.mean,
        components=model.components,
        extra={},
    )
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        torch.save(legacy, f'{d}/old.pt')
        again = ImplicitFeatUp.load(f'{d}/old.pt')
    assert again.phases is None and again.config['colour'] == 'imagenet' and again.config['grid'] == 'centres'
    assert torch.equal(again.features((10, 12)), model.features((10, 12)))


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
