"""FeatUp's upsampler training: jitter views, downsamplers, losses (framework-free), and the mmengine trainer
(loss decreases, checkpoint loads into FeatUpJBU and the detectron2 wrapper, resume equivalence)."""

import copy
import glob
import math
import os

import pytest
import torch
import torch.nn.functional as F

from featup_plugin.training import (
    JitterParams,
    UncertaintyHead,
    apply_jitter,
    blur_loss,
    clip_early_gradients,
    filter_entropy,
    magnitude,
    magnitude_loss,
    magnitude_tv_loss,
    multiview_loss,
    project,
    random_projection,
    reflect_pad,
    sample_jitter,
    sampled_crf_loss,
    total_variation,
    uncertainty_loss,
)
from featup_plugin.upsamplers import AttentionDownsampler, BlurDownsampler, build_downsampler, gaussian_blur
from tests import ROOT

from . import featup_reference as ref


# -- jitter --------------------------------------------------------------------------------------------------
def _pointwise(x):
    """A fixed per-pixel feature map (1x1 conv + nonlinearity): 3 -> 5 channels."""
    g = torch.Generator().manual_seed(1)
    w = torch.randn(5, 3, 1, 1, generator=g)
    return torch.tanh(F.conv2d(x, w))


@pytest.mark.parametrize('pad,y,x,flip', [(0, 0, 0, True), (3, 0, 0, False), (3, 6, 1, True), (5, 2, 9, False)])
def test_jitter_commutes_exactly_with_per_pixel_features_for_pads_crops_flips(pad, y, x, flip):
    img = torch.randn(2, 3, 20, 24)
    t = JitterParams.from_pixels((20, 24), pad=pad, y=y, x=x, flip=flip)
    # the same t on the image and on (per-pixel) features of the image: identical bits
    assert torch.equal(_pointwise(apply_jitter(img, t)), apply_jitter(_pointwise(img), t))


def test_jitter_pixels_match_a_hand_written_pad_crop_flip():
    img = torch.arange(2 * 16 * 16, dtype=torch.float32).view(1, 2, 16, 16)
    t = JitterParams.from_pixels((16, 16), pad=4, y=7, x=2, flip=True)
    expect = F.pad(img, [4, 4, 4, 4], mode='reflect')[:, :, 7:23, 2:18].flip(-1)
    assert torch.equal(apply_jitter(img, t), expect)
    assert torch.equal(apply_jitter(img, JitterParams()), img)  # identity
    assert apply_jitter(torch.randn(1, 1, 3, 3), JitterParams(pad=2.0)).shape == (1, 1, 3, 3)  # pad > side


def test_jitter_with_zoom_commutes_with_linear_per_pixel_maps():
    img = torch.randn(1, 3, 32, 32)
    t = JitterParams.from_pixels((32, 32), pad=4, zoom=1.7, y=11, x=20, flip=True)
    w = torch.randn(6, 3, 1, 1)
    torch.testing.assert_close(
        F.conv2d(apply_jitter(img, t), w), apply_jitter(F.conv2d(img, w), t), rtol=1e-5, atol=1e-5
    )


def test_jitter_is_resolution_independent_for_flips_and_agrees_for_zooms():
    low = torch.randn(1, 4, 16, 16)
    high = F.interpolate(low, scale_factor=2, mode='nearest')
    flip = JitterParams(flip=True)
    assert torch.equal(F.avg_pool2d(apply_jitter(high, flip), 2), apply_jitter(low, flip))
    # one t, two resolutions: a zoom + crop lands on the same region (up to resampling), far from the pads
    smooth = F.interpolate(torch.randn(1, 1, 4, 4), size=(64, 64), mode='bicubic', align_corners=False)
    t = JitterParams(pad=0.0, zoom=2.0, offset_y=0.5, offset_x=0.25)
    a = F.avg_pool2d(apply_jitter(smooth, t), 2)
    b = apply_jitter(F.avg_pool2d(smooth, 2), t)
    assert (a - b).abs().max() < 0.05 * smooth.abs().max()


def test_sample_jitter_is_reproducible_and_in_range():
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    views = [sample_jitter((224, 224), 20, 2.0, generator=g1) for _ in range(200)]
    assert views == [sample_jitter((224, 224), 20, 2.0, generator=g2) for _ in range(200)]
    flips = sum(v.flip for v in views)
    zooms = [v.zoom for v in views]
    assert 60 < flips < 140 and 60 < sum(z > 1 for z in zooms) < 140
    assert all(1 <= z <= 2 for z in zooms)
    for v in views:
        p = v.pixels((224, 224))
        assert p['pad_y'] == p['pad_x'] == 20
        assert 0 <= p['y'] <= p['zoomed'][0] - 224 and 0 <= p['x'] <= p['zoomed'][1] - 224
        assert p['y'] == round(v.offset_y * 224)  # offsets are whole pixels at the sampled size
    assert len({(v.offset_y, v.offset_x) for v in views}) > 150


def test_jitter_rejects_bad_input():
    with pytest.raises(ValueError, match='zoom'):
        JitterParams(zoom=0.5)
    with pytest.raises(ValueError, match='pad'):
        JitterParams(pad=-1)
    with pytest.raises(ValueError, match=r'\[B, C, H, W\]'):
        apply_jitter(torch.randn(3, 8, 8), JitterParams())
    with pytest.raises(TypeError, match='JitterParams'):
        apply_jitter(torch.randn(1, 3, 8, 8), dict(pad=1))
    with pytest.raises(ValueError, match='max_zoom'):
        sample_jitter((8, 8), 2, 0.5)


def test_reflect_pad_matches_torch_and_handles_large_pads():
    x = torch.randn(1, 2, 5, 7)
    assert torch.equal(reflect_pad(x, 2, 3), F.pad(x, [3, 3, 2, 2], mode='reflect'))
    assert reflect_pad(x, 9, 1).shape == (1, 2, 23, 9)


# -- downsamplers ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize('kind', ['blur', 'attention'])
@pytest.mark.parametrize(
    'hr,lr,k', [((224, 224), (14, 14), 16), ((64, 96), (4, 6), 16), ((40, 40), (5, 5), 8), ((20, 20), (4, 4), 8)]
)  # the last: overlapping windows
def test_downsampler_shapes_and_constant_maps(kind, hr, lr, k):
    down = build_downsampler(kind, 6, k).eval()
    out = down(torch.randn(2, 6, *hr), lr)
    assert out.shape == (2, 6, *lr)
    const = torch.full((1, 6, *hr), 3.0)
    torch.testing.assert_close(down(const, lr), torch.full((1, 6, *lr), 3.0))  # weights sum to 1


def test_blur_kernel_is_nonnegative_and_normalised():
    down = BlurDownsampler(5)
    with torch.no_grad():
        down.kernel_params.copy_(torch.randn(5, 5))
    k = down.get_kernel().detach()
    assert (k >= 0).all() and abs(float(k.sum()) - 1) < 1e-6
    x = torch.randn(1, 1, 5, 5)
    torch.testing.assert_close(down(x, (1, 1)).flatten(), (x[0, 0] * k).sum().view(1))


def test_attention_weights_normalised_and_trainable_everywhere():
    down = AttentionDownsampler(4, kernel_size=4).train()
    x = torch.randn(2, 4, 16, 16, requires_grad=True)
    patches, weights = down.attention(x, (4, 4))
    assert patches.shape == (2, 4, 4, 16, 4) and weights.shape == (2, 4, 4, 16)
    assert (weights >= 0).all()
    torch.testing.assert_close(weights.sum(-1), torch.ones(2, 4, 4))
    down(x, (4, 4)).square().sum().backward()
    for name, p in down.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    assert x.grad.abs().sum() > 0


@pytest.mark.parametrize(
    'hr,lr,k',
    [
        ((64, 64), (4, 4), 16),
        ((40, 56), (5, 7), 8),
        ((50, 45), (3, 2), 12),
        ((37, 41), (4, 5), 8),
        ((30, 30), (3, 3), 16),
        ((60, 60), (4, 4), 29),  # overlapping: implicit FeatUp's 29 px windows, here every 10 px
        ((41, 37), (5, 4), 9),  # overlapping, strides 8 and 9
        ((20, 30), (1, 3), 7),  # one window along y
        ((9, 9), (1, 1), 7),
        ((33, 27), (5, 1), 6),
    ],
)
def test_attention_fast_paths_equal_the_gathered_patches(hr, lr, k):
    """Disjoint windows (stride >= kernel, incl. gaps and windows past the output) and overlapping ones take
    paths that never gather patches; both must equal the weighted sum over the gathered patches (FeatUp's form),
    values and gradients."""
    torch.manual_seed(0)
    down = AttentionDownsampler(5, k).double().eval()
    with torch.no_grad():
        down.w.normal_(), down.b.normal_()
    x = torch.randn(2, 5, *hr, dtype=torch.float64, requires_grad=True)
    fast = down(x, lr)
    patches, weights = down.attention(x, lr)
    slow = (patches * weights.unsqueeze(-1)).sum(3).permute(0, 3, 1, 2)
    assert fast.shape == (2, 5, *lr)
    torch.testing.assert_close(fast, slow, rtol=1e-12, atol=1e-12)
    probe = torch.randn_like(fast)
    g_fast = torch.autograd.grad((fast * probe).sum(), [x] + list(down.parameters()))
    g_slow = torch.autograd.grad((slow * probe).sum(), [x] + list(down.parameters()))
    for a, b in zip(g_fast, g_slow):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_downsamplers_follow_the_module_device_and_dtype():
    down = AttentionDownsampler(3, 4).to(torch.float64)
    assert down(torch.randn(1, 3, 8, 8, dtype=torch.float64), (2, 2)).dtype == torch.float64
    assert down.w.device.type == 'cpu'


def test_downsampler_rejects_bad_input():
    with pytest.raises(ValueError, match='windows'):
        BlurDownsampler(16)(torch.randn(1, 2, 10, 10), (2, 2))
    with pytest.raises(ValueError, match='4-channel|channel'):
        AttentionDownsampler(4, 2)(torch.randn(1, 3, 8, 8), (4, 4))
    with pytest.raises(ValueError, match="'attention' or 'blur'"):
        build_downsampler('max', 3)


def test_gaussian_blur_keeps_constants_and_size():
    x = torch.full((1, 2, 9, 11), 2.5)
    torch.testing.assert_close(gaussian_blur(x), x)
    assert gaussian_blur(torch.randn(1, 2, 3, 3)).shape == (1, 2, 3, 3)


# -- losses ----------------------------------------------------------------------------------------------------
def test_uncertainty_loss_formula_and_its_optimal_scale():
    pred, target = torch.randn(2, 3, 4, 4), torch.randn(2, 3, 4, 4)
    s = torch.rand(2, 1, 4, 4) + 0.5
    expect = ((pred - target) ** 2 / (2 * s**2) + s.log()).mean()
    torch.testing.assert_close(uncertainty_loss(pred, target, s), expect)
    torch.testing.assert_close(uncertainty_loss(pred, target), ((pred - target) ** 2).mean())
    # d/ds of e/(2s^2) + log s vanishes at s^2 = e: a constant scale is optimal at the per-pixel RMS
    e = torch.tensor(0.37)
    s_opt = e.sqrt().view(1, 1, 1, 1).requires_grad_()
    uncertainty_loss(e.sqrt().view(1, 1, 1, 1), torch.zeros(1, 1, 1, 1), s_opt).backward()
    assert abs(float(s_opt.grad)) < 1e-6
    head = UncertaintyHead(3)
    assert (head(torch.randn(1, 3, 4, 4)) > 0).all() and head.net.weight.shape == (1, 3, 1, 1)
    with pytest.raises(ValueError, match='shapes differ'):
        uncertainty_loss(pred, target[:, :2])
    with pytest.raises(ValueError, match='scale'):
        uncertainty_loss(pred, target, s[:, :, :2])


def test_random_projection_unit_columns_and_reproducible():
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    p = random_projection(384, 30, g1)
    assert p.shape == (384, 30)
    torch.testing.assert_close(p.norm(dim=0), torch.ones(30))
    assert torch.equal(p, random_projection(384, 30, g2))
    assert torch.equal(random_projection(8, 30), torch.eye(8))
    f = torch.randn(2, 384, 3, 3)
    torch.testing.assert_close(project(f, p), torch.einsum('bchw,cd->bdhw', f, p))
    with pytest.raises(ValueError, match='project'):
        project(torch.randn(1, 5, 2, 2), p)


def test_uncertainty_head_featups_init_and_clamp():
    torch.manual_seed(11)
    plain = torch.nn.Conv2d(5, 1, 1)
    torch.manual_seed(11)
    head = UncertaintyHead(5)
    torch.testing.assert_close(head.net.weight, 0.1 * plain.weight)  # FeatUp: weights and bias x0.1 at init
    torch.testing.assert_close(head.net.bias, 0.1 * plain.bias)
    torch.manual_seed(11)
    assert torch.equal(UncertaintyHead(5, init_gain=1.0).net.weight, plain.weight)  # the previous init
    with torch.no_grad():
        head.net.bias.fill_(-50.0)
    assert torch.equal(head(torch.zeros(1, 5, 2, 2)), torch.full((1, 1, 2, 2), 1e-4))  # clamped at 1e-4
    assert float(UncertaintyHead(5, min_scale=0.0).eval()(torch.zeros(1, 5, 1, 1)).detach()) > 0
    for bad in (dict(init_gain=-1), dict(min_scale=float('nan'))):
        with pytest.raises(ValueError):
            UncertaintyHead(5, **bad)


def test_random_projection_one_matrix_per_image():
    g = torch.Generator().manual_seed(2)
    p = random_projection(40, 30, g, batch=3)
    assert p.shape == (3, 40, 30)
    torch.testing.assert_close(p.norm(dim=1), torch.ones(3, 30))
    assert not torch.allclose(p[0], p[1])
    f = torch.randn(3, 40, 2, 2)
    out = project(f, p)
    for i in range(3):
        torch.testing.assert_close(out[i], torch.einsum('chw,cd->dhw', f[i], p[i]))
    assert torch.equal(random_projection(8, 30, batch=2), torch.eye(8).expand(2, 8, 8))
    with pytest.raises(ValueError, match='batch of 2'):
        project(torch.randn(2, 40, 2, 2), p)


def test_tv_magnitude_and_blur_terms_equal_featups_formulas():
    flat = torch.ones(1, 3, 5, 5)
    assert float(total_variation(flat)) == 0 and float(magnitude_tv_loss(flat)) == 0
    ramp = torch.arange(5.0).view(1, 1, 1, 5).expand(1, 1, 5, 5)
    assert float(total_variation(ramp)) == pytest.approx(20 / 25)  # FeatUp divides both sums by B*C*H*W
    g = torch.Generator().manual_seed(4)
    x = torch.randn(2, 3, 6, 7, generator=g, dtype=torch.float64)
    t = torch.randn(2, 3, 6, 7, generator=g, dtype=torch.float64)
    m = torch.rand(2, 1, 6, 7, generator=g, dtype=torch.float64)
    assert float(total_variation(x)) == pytest.approx(ref.total_variation(x), rel=1e-12)
    # implicit FeatUp: TV of |F| (the square root); the JBU's tv term: TV of sum_c F^2
    assert float(magnitude_tv_loss(x)) == pytest.approx(ref.total_variation(ref.magnitude(x)), rel=1e-12)
    assert float(magnitude_tv_loss(x, squared=True)) == pytest.approx(
        ref.total_variation(x.square().sum(1, keepdim=True)), rel=1e-12
    )
    torch.testing.assert_close(magnitude(x), ref.magnitude(x), rtol=1e-12, atol=0)
    torch.testing.assert_close(magnitude_loss(m, t), (m - ref.magnitude(t)).square().mean(), rtol=1e-12, atol=0)
    torch.testing.assert_close(blur_loss(x), (ref.gaussian_blur_5x5(x) - x).square().mean(), rtol=1e-12, atol=0)
    z = torch.zeros(1, 4, 3, 3, requires_grad=True)
    magnitude(z).sum().backward()
    assert torch.equal(z.grad, torch.zeros_like(z))  # |F| at F = 0: gradient 0, not NaN
    with pytest.raises(ValueError, match=r'\[B, 1, h, w\]'):
        magnitude_loss(t, t)


def test_sampled_crf_loss_equals_featups_formula_and_is_zero_for_constant_features():
    g = torch.Generator().manual_seed(5)
    guide = torch.randn(2, 3, 9, 11, generator=g, dtype=torch.float64)
    feats = torch.randn(2, 4, 9, 11, generator=g, dtype=torch.float64)
    ys, xs = torch.tensor([0, 3, 8, 3, 5, 1]), torch.tensor([10, 2, 0, 2, 7, 5])  # a repeated pixel
    got = sampled_crf_loss(guide, feats, coords=(ys, xs))
    assert float(got) == pytest.approx(ref.crf(guide, feats, ys.tolist(), xs.tolist()), rel=1e-10)
    other = dict(alpha=0.3, beta=0.05, gamma=0.02, w1=2.0, w2=5.0, shift=0.5)
    assert float(sampled_crf_loss(guide, feats, coords=(ys, xs), **other)) == pytest.approx(
        ref.crf(guide, feats, ys.tolist(), xs.tolist(), **other), rel=1e-10
    )
    # drawn from the generator: reproducible, 1000 pixels by default
    a = sampled_crf_loss(guide, feats, generator=torch.Generator().manual_seed(1))
    assert float(a) == float(sampled_crf_loss(guide, feats, generator=torch.Generator().manual_seed(1)))
    # zero where it should be: constant features (any guidance), or a single pixel
    const = torch.full((2, 4, 9, 11), 0.7, dtype=torch.float64)
    assert float(sampled_crf_loss(guide, const, coords=(ys, xs))) == pytest.approx(0, abs=1e-12)
    assert float(sampled_crf_loss(guide, feats, n_samples=1)) == pytest.approx(0, abs=1e-12)
    with pytest.raises(ValueError, match='sizes differ'):
        sampled_crf_loss(guide, feats[:, :, :8])
    with pytest.raises(ValueError, match='alpha'):
        sampled_crf_loss(guide, feats, alpha=0)


def test_sampled_crf_loss_decreases_as_the_prediction_gets_smoother_and_follows_the_image():
    """Noise blurred more and more: the CRF energy decreases monotonically; features that follow the image's
    edges cost less than the same features shifted off them."""
    g = torch.Generator().manual_seed(6)
    noise = torch.randn(1, 8, 32, 32, generator=g, dtype=torch.float64)
    img = torch.zeros(1, 3, 32, 32, dtype=torch.float64)
    img[:, :, :, 16:] = 1.0  # two flat halves
    energies = []
    x = noise
    for _ in range(5):
        energies.append(float(sampled_crf_loss(img, x, generator=torch.Generator().manual_seed(0))))
        x = gaussian_blur(gaussian_blur(x))
    assert all(a > b for a, b in zip(energies, energies[1:])), energies
    aligned = img[:, :1].expand(1, 4, 32, 32) * 2  # features with the image's edge
    shifted = torch.roll(aligned, 8, dims=-1)  # the same edge, 8 px off
    e = [float(sampled_crf_loss(img, f, generator=torch.Generator().manual_seed(0))) for f in (aligned, shifted)]
    assert e[0] < 0.8 * e[1], e


def test_filter_entropy():
    k = torch.full((4, 4), 1 / 16, dtype=torch.float64)
    assert float(filter_entropy(k)) == pytest.approx(math.log(16))
    peaked = torch.zeros(4, 4, dtype=torch.float64)
    peaked[1, 2] = 1
    assert float(filter_entropy(peaked)) == pytest.approx(0, abs=1e-12)
    r = torch.rand(5, 5, dtype=torch.float64)
    assert float(filter_entropy(r / r.sum())) == pytest.approx(ref.entropy(r / r.sum()), rel=1e-12)


# -- the multi-view loss (framework-free) ---------------------------------------------------------------------
def _generated_batch(n=2, size=32):
    from featup_plugin.data.synthetic import generate_scene
    from featup_plugin.upsamplers import IMAGENET_MEAN, IMAGENET_STD

    rgb = torch.stack([torch.from_numpy(generate_scene(i, (size, size))[0]).permute(2, 0, 1) for i in range(n)])
    rgb = rgb.float() / 255
    return (rgb - torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)) / torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)


def test_multiview_loss_decreases_over_a_few_cpu_steps_on_generated_images():
    from featup_plugin.training import multiview_loss
    from featup_plugin.upsamplers import ChannelNorm, JBUStack

    torch.manual_seed(0)
    conv = torch.nn.Conv2d(3, 12, 8, 8).requires_grad_(False)
    norm = ChannelNorm(12).requires_grad_(False)

    def extract_lr(x):
        return norm(conv(x))

    jbu, down, scale = JBUStack(12, num_stages=3), AttentionDownsampler(12, 8), UncertaintyHead(12)
    params = [*jbu.parameters(), *down.parameters(), *scale.parameters()]
    opt = torch.optim.NAdam(params, lr=3e-3)
    img = _generated_batch()
    losses = []
    for step in range(12):
        gen = torch.Generator().manual_seed(step)
        out = multiview_loss(
            img,
            extract_lr,
            lambda lr, im: jbu(lr, im, output_size=im.shape[-2:]),
            down,
            scale,
            gen,
            n_views=2,
            max_pad=3,
            proj_dim=6,
            tv_weight=0.1,
        )
        assert set(out) == {'loss_rec', 'loss_crf', 'loss_tv'}
        loss = sum(out.values())
        opt.zero_grad()
        loss.backward()
        if step == 0:
            assert all(p.grad is not None for p in params)  # every trainable part takes part
        opt.step()
        losses.append(float(loss.detach()))
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3 - 0.05, losses
    with pytest.raises(ValueError, match='image size'):
        multiview_loss(img, extract_lr, lambda lr, im: lr, down, scale, torch.Generator())


class _Upsample:
    """A deterministic 'upsampler' (no dropout), counting its calls."""

    def __init__(self, dim=6):
        g = torch.Generator().manual_seed(9)
        self.w = torch.randn(dim, 3, 1, 1, generator=g, dtype=torch.float64, requires_grad=True)
        self.calls = 0

    def __call__(self, lr, img):
        self.calls += 1
        up = F.interpolate(lr, img.shape[-2:], mode='bilinear', align_corners=False)
        return up + 0.3 * torch.tanh(F.conv2d(img, self.w))


def _fixed_problem():
    g = torch.Generator().manual_seed(8)
    img = torch.randn(2, 3, 16, 16, generator=g, dtype=torch.float64)
    w_lr = torch.randn(6, 3, 1, 1, generator=g, dtype=torch.float64)

    def extract_lr(x):
        return F.conv2d(F.avg_pool2d(x, 4), w_lr)

    down = BlurDownsampler(4).double()
    scale_net = UncertaintyHead(6).double()
    with torch.no_grad():
        down.kernel_params.copy_(torch.randn(4, 4, generator=g, dtype=torch.float64))
        scale_net.net.weight.copy_(0.3 * torch.randn(1, 6, 1, 1, generator=g, dtype=torch.float64))
    return img, extract_lr, down, scale_net


@pytest.mark.parametrize('guidance', ['view', 'image'])
def test_multiview_loss_terms_equal_featups_formulas(guidance):
    """float64, fixed tensors and draws: rec (mean over views, one projection per image), CRF and TV on the first
    view, filter entropy once per view, against tests/training/featup_reference.py."""
    img, extract_lr, down, scale_net = _fixed_problem()
    up = _Upsample()
    kw = dict(n_views=2, max_pad=3, max_zoom=1.0, proj_dim=3, crf_weight=0.01, tv_weight=0.2, filter_ent_weight=0.05)
    out = multiview_loss(
        img,
        extract_lr,
        up,
        down,
        scale_net,
        torch.Generator().manual_seed(3),
        crf_samples=7,
        crf_guidance=guidance,
        **kw,
    )
    assert set(out) == {'loss_rec', 'loss_crf', 'loss_tv', 'loss_ent'} and up.calls == 2

    gen = torch.Generator().manual_seed(3)  # the same draws, in multiview_loss's order
    hr = up(extract_lr(img), img).detach()
    rec = 0.0
    for i in range(2):
        t = sample_jitter((16, 16), 3, 1.0, generator=gen)
        proj = random_projection(6, 3, gen, dtype=torch.float64, batch=2)
        p = t.pixels((16, 16))
        assert t.zoom == 1.0 and p['pad_y'] == 3
        jit_img = ref.pad_crop_flip(img, 3, p['y'], p['x'], t.flip)
        jit_hr = ref.pad_crop_flip(hr, 3, p['y'], p['x'], t.flip)
        target = extract_lr(jit_img)
        pred = ref.blur_downsample(jit_hr, down.kernel_params.detach(), (4, 4))
        s = ref.scale(target, scale_net.net.weight.detach(), scale_net.net.bias.detach())
        rec += (
            float(
                ref.uncertainty(
                    torch.einsum('bchw,bcd->bdhw', pred, proj), torch.einsum('bchw,bcd->bdhw', target, proj), s
                )
            )
            / 2
        )
        if i == 0:
            ys = torch.randint(0, 16, (7,), generator=gen).tolist()
            xs = torch.randint(0, 16, (7,), generator=gen).tolist()
            proj_hr = torch.einsum('bchw,bcd->bdhw', jit_hr, proj)
            crf = 0.01 * ref.crf(jit_img if guidance == 'view' else img, proj_hr, ys, xs)
            tv = 0.2 * ref.total_variation(proj_hr.square().sum(1, keepdim=True))
    k = down.kernel_params.detach().abs()
    ent = -0.05 * 2 * ref.entropy(k / k.sum())
    for key, v in dict(loss_rec=rec, loss_crf=crf, loss_tv=tv, loss_ent=ent).items():
        assert float(out[key].detach()) == pytest.approx(v, rel=1e-10), key
    assert float(out['loss_crf'].detach()) > 0


def test_upsampling_once_per_step_equals_once_per_view_without_dropout():
    """The two modes differ only in the upsampler's dropout masks: with a deterministic upsampler, the same draws
    give the same losses and gradients, and once per step calls it once."""
    img, extract_lr, down, scale_net = _fixed_problem()
    results = []
    for per_view in (True, False):
        up = _Upsample()
        out = multiview_loss(
            img,
            extract_lr,
            up,
            down,
            scale_net,
            torch.Generator().manual_seed(4),
            n_views=3,
            max_pad=3,
            upsample_per_view=per_view,
            crf_samples=50,
        )
        loss = sum(out.values())
        (grad,) = torch.autograd.grad(loss, [up.w])
        results.append((up.calls, {k: float(v.detach()) for k, v in out.items()}, grad))
    assert results[0][0] == 3 and results[1][0] == 1
    assert results[0][1] == pytest.approx(results[1][1], rel=1e-12)
    torch.testing.assert_close(results[0][2], results[1][2], rtol=1e-10, atol=1e-14)


def test_multiview_loss_rejects_bad_options():
    img, extract_lr, down, scale_net = _fixed_problem()
    gen = torch.Generator()
    for bad, match in (
        (dict(crf_weight=-1), 'crf_weight'),
        (dict(tv_weight=float('inf')), 'tv_weight'),
        (dict(crf_guidance='other'), 'crf_guidance'),
        (dict(n_views=0), 'n_views'),
    ):
        with pytest.raises(ValueError, match=match):
            multiview_loss(img, extract_lr, _Upsample(), down, scale_net, gen, **bad)
    with pytest.raises(ValueError, match='blur downsampler'):
        multiview_loss(img, extract_lr, _Upsample(), AttentionDownsampler(6, 4), scale_net, gen, filter_ent_weight=1)


def test_clip_early_gradients_clips_exactly_the_first_steps():
    w = torch.nn.Parameter(torch.ones(10))
    norms = []
    for step in range(12):
        w.grad = torch.full((10,), 3.0)
        clip_early_gradients([w], step)
        norms.append(float(w.grad.norm()))
    assert all(n == pytest.approx(1e-4, rel=1e-4) for n in norms[:10])
    assert norms[10:] == [pytest.approx(float(torch.full((10,), 3.0).norm()))] * 2


# -- the mmengine trainer (FeatUpJBUTrainer), its configs and checkpoints ------------------------------------------
CPU_CONFIG = os.path.join(ROOT, 'configs', 'synthetic', 'jbu_vit-tiny-p8_1xb2-100i_featup-synth-64.py')
JBU_CONFIGS = sorted(glob.glob(os.path.join(ROOT, 'configs', '**', 'jbu_*.py'), recursive=True))


def _mmseg():
    pytest.importorskip('mmseg', reason='MMSegmentation is not installed')
    from mmseg.utils import register_all_modules

    import featup_plugin  # noqa: F401  registers the modules
    from featup_plugin.mmseg.engine import use_mmengine_checkpoint_loader

    register_all_modules(init_default_scope=False)
    use_mmengine_checkpoint_loader()


def _tiny(cfg, synth_root, work_dir, size=32, iters=2):
    """A config shrunk for the tests: 32 px generated images, batch 2, 2 views."""
    cfg = copy.deepcopy(cfg)
    cfg.pop('synthetic_data', None)
    if cfg.model.backbone.type == 'Detectron2Backbone':  # random init (no download), the real ResNet-50
        if cfg.model.backbone.get('weights'):
            cfg.model.backbone.weights = None
    else:
        cfg.model.backbone.pretrained = False
    if cfg.model.backbone.type == 'TimmViT' and cfg.model.feat_dim > 64:  # the 224 px ViT-S config: fewer blocks
        cfg.model.backbone.model_kwargs = dict(depth=1)
    cfg.model.n_views, cfg.model.max_pad = 2, 3
    loader = cfg.train_dataloader
    loader.batch_size, loader.num_workers, loader.persistent_workers = 2, 0, False
    loader.dataset.root, loader.dataset.size = os.path.join(synth_root, 'img_dir', 'train'), size
    cfg.train_cfg.max_iters = iters
    cfg.default_hooks.checkpoint.interval = iters
    cfg.default_hooks.logger.interval = 1
    cfg.work_dir = str(work_dir)
    return cfg


class _Losses:
    """Records the loss of every training iteration."""

    def __init__(self):
        from mmengine.hooks import Hook

        class H(Hook):
            def after_train_iter(hook, runner, batch_idx, data_batch=None, outputs=None):
                self.values.append(float(outputs['loss'].detach()))

        self.values, self.hook = [], H()


def _train(cfg):
    from mmengine.runner import Runner

    runner = Runner.from_cfg(cfg)
    rec = _Losses()
    runner.register_hook(rec.hook)
    runner.train()
    return runner, rec.values


class _TinyBackbone(torch.nn.Module):
    """A frozen stride-4 conv 'backbone' with 8 channels."""

    out_channels = 8

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 8, 4, 4)

    def forward(self, x):
        return self.conv(x)


def test_trainer_defaults_are_featups_and_bad_values_fail_at_build_time():
    _mmseg()
    from mmseg.registry import MODELS

    def build(**kw):
        return MODELS.build(
            dict(
                type='FeatUpJBUTrainer', backbone=_TinyBackbone(), feat_dim=8, num_stages=2, downsampler_kernel=4, **kw
            )
        )

    model = build()
    assert (model.crf_weight, model.crf_guidance, model.crf_samples) == (0.001, 'image', 1000)
    assert model.upsample_per_view and model.filter_ent_weight == 0 and model.tv_weight == 0
    assert model.downsampler.attention_net[0].p == 0.2 and model.scale_net.min_scale == 1e-4
    losses = model(_generated_batch(2, 32)[:, :, :16, :16], mode='loss')
    assert set(losses) == {'loss_rec', 'loss_crf'} and all(torch.isfinite(v) for v in losses.values())
    # the previous behaviour, as options
    old = build(
        crf_weight=0, upsample_per_view=False, scale_init_gain=1.0, min_scale=0.0, downsampler_cfg=dict(dropout=0.1)
    )
    assert set(old(_generated_batch(2, 32)[:, :, :16, :16], mode='loss')) == {'loss_rec'}
    assert old.downsampler.attention_net[0].p == 0.1
    assert build(uncertainty=False).scale_net is None
    blur = build(downsampler='blur', filter_ent_weight=0.1, tv_weight=0.1)
    assert set(blur(_generated_batch(2, 32)[:, :, :16, :16], mode='loss')) == {
        'loss_rec',
        'loss_crf',
        'loss_tv',
        'loss_ent',
    }
    for bad, match in (
        (dict(crf_weight=-0.1), 'crf_weight'),
        (dict(filter_ent_weight=float('nan')), 'filter_ent_weight'),
        (dict(crf_guidance='jittered'), 'crf_guidance'),
        (dict(crf_samples=0), 'crf_samples'),
        (dict(filter_ent_weight=0.1), "downsampler='blur'"),
        (dict(min_scale=-1), 'min_scale'),
        (dict(downsampler_cfg=dict(dropout=1.5)), 'dropout'),
    ):
        with pytest.raises(ValueError, match=match):
            build(**bad)


def _grad_norm(params):
    return float(torch.stack([p.grad.norm() for p in params if p.grad is not None]).norm())


def test_early_grad_clip_hook_clips_exactly_the_first_10_iterations_and_restores_the_wrapper():
    _mmseg()
    import types

    from mmengine.logging import MessageHub
    from mmengine.optim import OptimWrapper

    from featup_plugin.mmseg.trainers import EarlyGradClipHook

    for own_clip in (None, dict(max_norm=0.5)):
        MessageHub.get_current_instance().log_scalars.pop('train/grad_norm', None)
        net = torch.nn.Linear(4, 1)
        wrapper = OptimWrapper(torch.optim.NAdam(net.parameters(), lr=1e-3), clip_grad=copy.deepcopy(own_clip))
        seen = []
        wrapper.optimizer.register_step_pre_hook(lambda opt, args, kwargs: seen.append(_grad_norm(net.parameters())))
        hook, runner = EarlyGradClipHook(), types.SimpleNamespace(iter=0, optim_wrapper=wrapper)
        logged = []
        for it in range(13):
            runner.iter = it
            hook.before_train_iter(runner, it)
            wrapper.update_params((net(torch.full((8, 4), 10.0)) ** 2).mean())
            logged.append('train/grad_norm' in wrapper.message_hub.log_scalars)
        hook.after_train(runner)
        # the norm before clipping is logged while clipping; later only if the wrapper clips itself (not stale)
        assert logged == [True] * 10 + [own_clip is not None] * 3, logged
        assert all(n == pytest.approx(1e-4, rel=1e-3) for n in seen[:10]), seen
        if own_clip is None:
            assert all(n > 1.0 for n in seen[10:]), seen  # not clipped
            assert wrapper.clip_grad_kwargs is None
        else:
            assert all(n == pytest.approx(0.5, rel=1e-3) for n in seen[10:]), seen  # the wrapper's own again
            assert wrapper.clip_grad_kwargs == dict(max_norm=0.5)
    # a run resumed past the first steps is not clipped; a run stopped early gets the wrapper back
    net = torch.nn.Linear(4, 1)
    wrapper = OptimWrapper(torch.optim.NAdam(net.parameters(), lr=1e-3))
    hook = EarlyGradClipHook()
    hook.before_train_iter(types.SimpleNamespace(iter=50, optim_wrapper=wrapper), 0)
    assert wrapper.clip_grad_kwargs is None
    hook.before_train_iter(types.SimpleNamespace(iter=3, optim_wrapper=wrapper), 0)
    assert wrapper.clip_grad_kwargs == dict(max_norm=1e-4, norm_type=2)
    hook.after_train(types.SimpleNamespace(iter=4, optim_wrapper=wrapper))
    assert wrapper.clip_grad_kwargs is None and not hasattr(wrapper, 'clip_func')
    for bad in (dict(max_norm=0), dict(steps=-1), dict(steps=2.5)):
        with pytest.raises(ValueError):
            EarlyGradClipHook(**bad)


@pytest.mark.slow
def test_the_cpu_config_clips_gradients_exactly_in_the_first_10_iterations(synth_root, tmp_path):
    _mmseg()
    from mmengine.config import Config
    from mmengine.hooks import Hook
    from mmengine.runner import Runner

    cfg = _tiny(Config.fromfile(CPU_CONFIG), synth_root, tmp_path, iters=12)
    assert cfg.custom_hooks == [dict(type='EarlyGradClipHook', max_norm=1e-4, steps=10)]
    runner = Runner.from_cfg(cfg)
    seen = []

    class Spy(Hook):
        def before_train(self, runner):
            params = [p for p in runner.model.parameters() if p.requires_grad]
            runner.optim_wrapper.optimizer.register_step_pre_hook(lambda *a: seen.append(_grad_norm(params)))

    runner.register_hook(Spy())
    runner.train()
    assert len(seen) == 12
    assert all(n == pytest.approx(1e-4, rel=1e-3) for n in seen[:10]), seen
    assert all(n > 1e-3 for n in seen[10:]), seen


@pytest.mark.slow
@pytest.mark.parametrize('path', JBU_CONFIGS, ids=lambda p: os.path.basename(p))
def test_jbu_configs_build_and_train_one_iteration(path, synth_root, tmp_path):
    _mmseg()
    from mmengine.config import Config

    cfg = Config.fromfile(path)
    assert cfg.model.type == 'FeatUpJBUTrainer' and 'featup_plugin' in cfg.custom_imports['imports']
    assert cfg.optim_wrapper.optimizer.type == 'NAdam' and cfg.optim_wrapper.optimizer.lr == 1e-3
    assert dict(type='EarlyGradClipHook', max_norm=1e-4, steps=10) in cfg.custom_hooks
    if '_images-224' in path:  # FeatUp's defaults
        assert (cfg.model.n_views, cfg.model.max_pad, cfg.model.max_zoom, cfg.model.proj_dim) == (5, 20, 2.0, 30)
        assert (cfg.model.crf_weight, cfg.model.upsample_per_view) == (0.001, True)
        assert cfg.model.downsampler == 'attention' and cfg.train_dataloader.batch_size == 4
        assert cfg.train_dataloader.dataset.size == 224
    runner, losses = _train(_tiny(cfg, synth_root, tmp_path, size=32, iters=1))
    assert len(losses) == 1 and math.isfinite(losses[0])
    model = runner.model
    trainable = {n.split('.')[0] for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {'upsampler', 'downsampler', 'scale_net'}
    assert not model.backbone.training and all(not p.requires_grad for p in model.backbone.parameters())


@pytest.mark.slow
def test_checkpoint_loads_into_featupjbu_detectron2_and_extracts(synth_root, tmp_path, capsys):
    _mmseg()
    from mmengine.config import Config
    from mmseg.registry import MODELS

    from featup_plugin.checkpoint import load_mmengine_checkpoint
    from featup_plugin.upsamplers import JBUStack

    cfg = _tiny(Config.fromfile(CPU_CONFIG), synth_root, tmp_path / 'work', iters=2)
    runner, _ = _train(cfg)
    ckpt = str(tmp_path / 'work' / 'iter_2.pth')
    trained = {k: v for k, v in runner.model.upsampler.state_dict().items()}
    assert any(
        not torch.equal(v, JBUStack(64, 3).state_dict()[k]) for k, v in trained.items() if 'fixup_proj.1' in k
    )  # trained: not the init
    state = load_mmengine_checkpoint(ckpt)['state_dict']
    assert {k.split('.')[0] for k in state} == {'backbone', 'norm', 'upsampler', 'downsampler', 'scale_net', 'step'}

    # mmseg neck, through mmengine's init_cfg
    neck = MODELS.build(
        dict(
            type='FeatUpJBU',
            in_channels=64,
            in_index=0,
            feature_strides=8,
            init_cfg=dict(type='Pretrained', checkpoint=ckpt),
        )
    )
    neck.init_weights()
    for k, v in trained.items():
        assert torch.equal(neck.upsamplers[0].state_dict()[k], v), k

    # the bare stack via tools/model_converters/extract_upsampler.py
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        'extract_upsampler', os.path.join(ROOT, 'tools', 'model_converters', 'extract_upsampler.py')
    )
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    out = str(tmp_path / 'jbu.pth')
    assert tool.main([ckpt, out]) == 0
    assert 'JBUStack(feat_dim=64, num_stages=3)' in capsys.readouterr().out
    stack = JBUStack(64, num_stages=3)
    stack.load_state_dict(torch.load(out, weights_only=True))  # strict: exactly the stack
    assert all(torch.equal(stack.state_dict()[k], v) for k, v in trained.items())

    # detectron2 wrapper: MODEL.FEATUP.WEIGHTS takes the training checkpoint as it is
    if __import__('importlib').util.find_spec('detectron2') is not None:
        from detectron2.config import get_cfg
        from detectron2.modeling import build_backbone

        from featup_plugin.detectron2 import add_featup_config

        d2 = add_featup_config(get_cfg())
        d2.MODEL.FEATUP.TIMM_MODEL = 'vit_small_patch8_224'
        d2.MODEL.FEATUP.TIMM_KWARGS.update(depth=2, embed_dim=64, num_heads=2)
        d2.MODEL.FEATUP.OUTPUT_STRIDE = 1
        d2.MODEL.FEATUP.WEIGHTS = ckpt
        d2.MODEL.BACKBONE.NAME = 'FeatUpBackbone'
        d2.MODEL.PIXEL_MEAN, d2.MODEL.PIXEL_STD, d2.INPUT.FORMAT = (
            [123.675, 116.28, 103.53],
            [58.395, 57.12, 57.375],
            'RGB',
        )
        bb = build_backbone(d2)
        (loaded,) = [u for u in bb.upsamplers.values()]
        assert all(torch.equal(loaded.state_dict()[k], v) for k, v in trained.items())


@pytest.mark.slow
def test_resume_gives_the_next_step_loss_of_an_uninterrupted_run(synth_root, tmp_path):
    _mmseg()
    from mmengine.config import Config

    base = Config.fromfile(CPU_CONFIG)
    cfg = _tiny(base, synth_root, tmp_path / 'a', iters=3)
    cfg.default_hooks.checkpoint.interval = 2
    _, straight = _train(cfg)
    cfg = _tiny(base, synth_root, tmp_path / 'b', iters=3)
    cfg.resume, cfg.load_from = True, str(tmp_path / 'a' / 'iter_2.pth')
    runner, resumed = _train(cfg)
    assert runner.iter == 3 and len(straight) == 3 and len(resumed) == 1
    assert resumed[0] == pytest.approx(straight[2], rel=1e-6, abs=1e-7)
    assert straight[2] != pytest.approx(straight[1], rel=1e-4)  # steps differ: the comparison can fail


@pytest.mark.slow
def test_two_process_ddp_training_through_tools_train(synth_root, tmp_path):
    """tools/train.py with torchrun (2 processes, gloo on CPU): DDP over the trainer, one checkpoint."""
    _mmseg()
    import socket
    import subprocess
    import sys

    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        port = s.getsockname()[1]
    work = str(tmp_path / 'work')
    opts = [
        f'train_dataloader.dataset.root={os.path.join(synth_root, "img_dir", "train")}',
        'train_dataloader.dataset.size=32',
        'train_dataloader.batch_size=1',
        'train_dataloader.num_workers=0',
        'model.n_views=1',
        'model.max_pad=3',
        'train_cfg.max_iters=2',
        'default_hooks.checkpoint.interval=2',
        'default_hooks.logger.interval=1',
        'synthetic_data=None',
    ]
    env = dict(os.environ, PYTHONPATH=ROOT, OMP_NUM_THREADS='1')
    res = subprocess.run(
        [
            sys.executable,
            '-m',
            'torch.distributed.run',
            '--nproc_per_node=2',
            f'--master_port={port}',
            os.path.join(ROOT, 'tools', 'train.py'),
            CPU_CONFIG,
            '--launcher',
            'pytorch',
            '--work-dir',
            work,
            '--cfg-options',
            *opts,
        ],
        cwd=str(tmp_path),
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    out = res.stdout + res.stderr
    assert res.returncode == 0, out[-4000:]
    assert 'Distributed training: True' in out and 'loss_rec' in out
    assert os.path.isfile(os.path.join(work, 'iter_2.pth'))


def test_upsampler_stacks_are_found_in_every_checkpoint_layout():
    """The one parser of upsampler checkpoints (FeatUpJBU, detectron2's FeatUpBackbone, extract_upsampler)."""
    from featup_plugin.checkpoint import UpsamplerWeightsError, assign_upsampler_stacks, find_upsampler_stacks
    from featup_plugin.upsamplers import JBUStack

    sd = JBUStack(4, num_stages=2).state_dict()

    def under(prefix):
        return {prefix + k: v for k, v in sd.items()}

    decoy = {'decode_head.up1.conv.weight': torch.zeros(1), 'backbone.model.fixup_proj.w': torch.zeros(1)}
    layouts = {
        '': sd,
        'upsampler': {**under('upsampler.'), 'scale_net.net.weight': torch.zeros(1), **decoy},
        'neck.upsamplers.0': {**under('neck.upsamplers.0.'), 'neck.norms.0.weight': torch.ones(4)},
        'backbone.upsamplers.res5': under('backbone.upsamplers.res5.'),
    }
    for root, state in layouts.items():
        stacks = find_upsampler_stacks({'state_dict': state})
        assert list(stacks) == [root] and list(stacks[root]) == list(sd), root  # the decoys are no stacks
    assert list(find_upsampler_stacks(under('a.'), prefix='a.')) == ['']
    two = {**under('res4.'), **under('res5.')}
    got = assign_upsampler_stacks(two, ['res4', 'res5'])
    assert [r for r, _ in got.values()] == ['res4', 'res5']
    assert assign_upsampler_stacks(layouts['neck.upsamplers.0'], ['0'])['0'][0] == 'neck.upsamplers.0'
    assert assign_upsampler_stacks(layouts['upsampler'], ['0'])['0'][0] == 'upsampler'
    with pytest.raises(UpsamplerWeightsError, match='one bare JBUStack'):
        assign_upsampler_stacks(sd, ['0', '1'])
    with pytest.raises(ValueError, match="set the prefix to 'module.'"):
        assign_upsampler_stacks(under('module.'), ['0'])
    assert assign_upsampler_stacks(under('module.'), ['0'], prefix='module.')['0'][0] == ''
    with pytest.raises(KeyError, match="no weights for the upsampler of 'res3'"):
        assign_upsampler_stacks(two, ['res3', 'res5'])
    with pytest.raises(KeyError, match='holds no upsampler weights'):
        assign_upsampler_stacks(decoy, ['0'])
    # extract_upsampler: a checkpoint without the prefix names its top-level entries (several keys per entry)
    from featup_plugin.checkpoint import extract_upsampler_state_dict

    with pytest.raises(KeyError, match=r"no key starts with 'upsampler\.' \(top-level entries: backbone, neck\)"):
        extract_upsampler_state_dict({'state_dict': {**under('neck.upsamplers.0.'), 'backbone.a': torch.zeros(1)}})
    from featup_plugin.checkpoint import trim_stages

    kept, dropped = trim_stages(JBUStack(4, num_stages=3).state_dict(), 1)
    assert dropped == ['up2', 'up3'] and list(kept) == [k for k in kept if not k.startswith(('up2.', 'up3.'))]
    assert any(k.startswith('up1.') for k in kept) and any(k.startswith('fixup_proj.') for k in kept)
    out, info = extract_upsampler_state_dict({'state_dict': layouts['upsampler']})
    assert list(out) == list(sd) and info['feat_dim'] == 4 and info['num_stages'] == 2
