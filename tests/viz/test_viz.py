"""featup_plugin.viz.pca / plot_feats, against FeatUp's ``featup.util.pca`` semantics re-derived here with an SVD:
one PCA fitted on every map (the others resized bilinearly to the first map's size), applied to each map at its own
size, then min-max scaled per map and component."""

import pytest
import torch
import torch.nn.functional as F

from featup_plugin.viz import TorchPCA, pca, plot_feats
from tests.helpers import one_thread  # noqa: E402, F401

pytestmark = pytest.mark.usefixtures('one_thread')


def planted(b=1, h=8, w=10, c=6, seed=0):
    """Maps whose channel covariance has three known directions (variances 9, 4, 1) plus small noise."""
    g = torch.Generator().manual_seed(seed)
    basis = torch.linalg.qr(torch.randn(c, c, generator=g))[0].T  # orthonormal rows
    coef = torch.randn(b * h * w, 3, generator=g) * torch.tensor([3.0, 2.0, 1.0])
    rows = coef @ basis[:3] + 0.01 * torch.randn(b * h * w, c, generator=g) + 5.0
    return rows.reshape(b, h, w, c).permute(0, 3, 1, 2), basis[:3]


def test_pca_is_featups_one_fit_applied_to_all():
    lr, basis = planted(h=6, w=8, seed=1)
    hr = F.interpolate(lr, (24, 32), mode='bilinear', align_corners=False) + 0.01 * torch.randn(1, 6, 24, 32)
    (lr_rgb, hr_rgb), fitted = pca([lr, hr])
    assert lr_rgb.shape == (1, 3, 6, 8) and hr_rgb.shape == (1, 3, 24, 32)
    # the re-derivation: rows of both maps at the first map's size, SVD of the centred rows
    rows = torch.cat([m.permute(0, 2, 3, 1).reshape(-1, 6) for m in (lr, F.interpolate(hr, (6, 8), mode='bilinear'))])
    mean = rows.mean(0)
    _, _, vh = torch.linalg.svd(rows - mean, full_matrices=False)
    assert torch.allclose(fitted.mean_, mean, atol=1e-5)
    dots = (fitted.components_ @ vh[:3].T).diagonal()
    assert torch.allclose(dots.abs(), torch.ones(3), atol=1e-4)  # the same directions, largest variance first
    assert bool(((fitted.components_ @ basis.T).abs().diagonal() > 0.95).all())  # the planted directions
    for maps, rgb in ((lr, lr_rgb), (hr, hr_rgb)):
        z = (maps.permute(0, 2, 3, 1).reshape(-1, 6) - mean) @ (vh[:3] * dots.sign()[:, None]).T
        z = (z - z.min(0).values) / (z.max(0).values - z.min(0).values)
        torch.testing.assert_close(rgb.permute(0, 2, 3, 1).reshape(-1, 3), z, rtol=1e-4, atol=1e-4)
        assert torch.allclose(rgb.amin((0, 2, 3)), torch.zeros(3)) and torch.allclose(
            rgb.amax((0, 2, 3)), torch.ones(3)
        )
    again, _ = pca([lr, hr])
    assert torch.equal(again[0], lr_rgb)  # deterministic (FeatUp's randomised pca_lowrank is not)


def test_fitted_pca_reuse_and_shared_scale():
    a, _ = planted(b=2, seed=2)
    (a_rgb,), fitted = pca([a], dim=2, max_samples=50)
    assert a_rgb.shape == (2, 2, 8, 10) and fitted.components_.shape == (2, 6)
    b = a[:, :, :4, :5].clone()  # a crop: the same feature vectors
    (b_map,), same = pca([b], fit_pca=fitted)
    assert same is fitted and b_map.shape == (2, 2, 4, 5)
    (a_fit, b_fit), _ = pca([a, b], fit_pca=fitted, scale='fit')  # one scaling: a crop keeps its colours
    torch.testing.assert_close(b_fit, a_fit[:, :, :4, :5])
    assert not torch.allclose(b_map, a_rgb[:, :, :4, :5])  # per-map min-max (FeatUp) rescales the crop


def test_pca_errors():
    x, _ = planted()
    with pytest.raises(ValueError, match='same number of channels'):
        pca([x, x[:, :4]])
    with pytest.raises(ValueError, match='exceeds the 6 feature channels'):
        pca([x], dim=7)
    with pytest.raises(ValueError, match="scale must be 'map'"):
        pca([x], scale='global')
    with pytest.raises(ValueError, match=r'list of \[B, C, H, W\] tensors'):
        pca([x[0]])
    with pytest.raises(ValueError, match='positive int'):
        TorchPCA(0)


def test_plot_feats_figure(tmp_path):
    pytest.importorskip('matplotlib')
    from matplotlib.figure import Figure

    lr, _ = planted(h=4, w=6, c=8, seed=3)
    hr = F.interpolate(lr, (32, 48), mode='bilinear')
    img = torch.rand(3, 32, 48)
    fig = plot_feats(img, lr[0], hr)  # [C, h, w] and [1, C, H, W] both accepted
    assert isinstance(fig, Figure) and [a.get_title() for a in fig.axes] == [
        'Image',
        'Original Features',
        'Upsampled Features',
    ]
    shown = [a.get_images()[0].get_array() for a in fig.axes]
    assert [tuple(s.shape) for s in shown] == [(32, 48, 3), (4, 6, 3), (32, 48, 3)]
    assert abs(float(shown[0].mean()) - float(img.mean())) < 1e-6
    fig.savefig(tmp_path / 'feats.png')
    assert (tmp_path / 'feats.png').stat().st_size > 1000
    mean, std = torch.tensor([0.485, 0.456, 0.406]), torch.tensor([0.229, 0.224, 0.225])
    fig = plot_feats((img - mean[:, None, None]) / std[:, None, None], lr, hr, imagenet_normalized=True)
    assert abs(float(fig.axes[0].get_images()[0].get_array().mean()) - float(img.mean())) < 1e-5
    with pytest.raises(ValueError, match='same channels'):
        plot_feats(img, lr, hr[:, :4])
    with pytest.raises(ValueError, match=r'image must be RGB \[3, H, W\]'):
        plot_feats(img[:1], lr, hr)
