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
    from featup_plugin.datasets.images import IMAGENET_MEAN, IMAGENET_STD
    from featup_plugin.datasets.synthetic import generate_scene
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
