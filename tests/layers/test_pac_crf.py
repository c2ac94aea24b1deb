"""PacCRF: mean-field with PAC messages against a dense N x N formulation written independently (kernel values
from the paper's formulas, messages as matrix products), the zero-weight identity, which update is monotone in
the mean-field free energy, gradients, and errors."""

import math

import pytest
import torch

from featup_plugin.layers.pac_crf import PacCRF

D = torch.float64


def dense_kernel(crf, rgb, h, w):
    """``[B, N, N]`` pairwise weights ``k_ij`` written out tap by tap from each kernel's definition."""
    b = rgb.shape[0] if rgb is not None else 1
    n = h * w
    kmat = torch.zeros(b, n, n, dtype=D)
    ys, xs = torch.meshgrid(torch.arange(h), torch.arange(w), indexing='ij')
    for m in crf.kernels:
        s = m.spec
        k, d, c = s['kernel_size'], s['dilation'], (s['kernel_size'] - 1) // 2
        if s['features'] == 'xy':
            f = torch.zeros(b, 1, h, w, dtype=D)
        elif s['features'] == 'learned':
            f = m.feature_net(rgb)
        else:
            f = rgb * 255 / s['theta_rgb']
        sf = m.spatial_filter()
        for ty in range(k):
            for tx in range(k):
                if ty == c and tx == c:
                    continue
                dy, dx = (ty - c) * d, (tx - c) * d
                pos = 1.0 if s['theta_xy'] is None else math.exp(-(dy * dy + dx * dx) / (2 * s['theta_xy'] ** 2))
                if sf is not None:
                    pos = pos * sf[ty * k + tx]
                yy, xx = ys + dy, xs + dx
                ok = (yy >= 0) & (yy < h) & (xx >= 0) & (xx < w)
                i = (ys * w + xs)[ok]
                j = (yy * w + xx)[ok]
                fi, fj = f[:, :, ys[ok], xs[ok]], f[:, :, yy[ok], xx[ok]]
                val = torch.exp(-0.5 * ((fi - fj) ** 2).sum(1)) * pos * m.weight
                kmat[:, i, j] += val.expand(b, -1)
    return kmat


def flat(t):  # [B, L, H, W] -> [B, N, L]
    return t.flatten(2).transpose(1, 2)


def dense_energy(crf, kmat, logits, q):
    mu = crf.compatibility()
    qf, lf = flat(q), flat(logits)
    pair = kmat @ qf @ mu.t()
    return (-qf * lf + 0.5 * qf * pair + torch.xlogy(qf, qf)).sum((1, 2))


def make_crf(update='parallel', weights=(0.1, 0.1, 0.1), num_classes=3, spatial=False, num_iters=3):
    kernels = [
        dict(features='xyrgb', kernel_size=5, dilation=1, theta_xy=3.0, theta_rgb=40.0),
        dict(features='xy', kernel_size=3, dilation=2, theta_xy=2.0, spatial_filter=spatial),
        dict(features='learned', kernel_size=3, feature_channels=4, hidden_channels=5),
    ]
    kernels = [dict(k, weight=w) for k, w in zip(kernels, weights)]
    return PacCRF(num_classes, num_iters, kernels, update=update).double()


def randomise(crf, scale=1.0):
    with torch.no_grad():
        crf.compat.copy_(torch.randn_like(crf.compat))
        for m in crf.kernels:
            m.weight.fill_(float(torch.randn(())) * scale)
            if m.spatial is not None:
                m.spatial.copy_(torch.rand_like(m.spatial) * 2 - 0.5)


def inputs(b=2, c=3, h=7, w=6, scale=3.0):
    return torch.randn(b, c, h, w, dtype=D) * scale, torch.rand(b, 3, h, w, dtype=D)


def test_zero_pairwise_weight_returns_the_unary():
    logits, rgb = inputs()
    for update in ('parallel', 'sequential'):
        crf = make_crf(update, weights=(0.0, 0.0, 0.0), spatial=True)
        assert torch.equal(crf(logits, rgb), logits)
        crf.kernels[0].weight.data.fill_(0.1)  # sanity: a non-zero weight changes the output
        assert (crf(logits, rgb) - logits).abs().max() > 1e-3
    assert torch.equal(PacCRF(3, num_iters=0)(logits, rgb), logits)


def test_kernels_match_the_dense_definition_and_are_symmetric():
    logits, rgb = inputs()
    crf = make_crf(spatial=True)
    randomise(crf)
    kmat = dense_kernel(crf, rgb, 7, 6)
    assert torch.allclose(kmat, kmat.transpose(1, 2), atol=1e-12) and kmat.abs().sum() > 0
    assert (kmat.diagonal(dim1=1, dim2=2) == 0).all()
    q = logits.softmax(1)
    kernels = crf.pairwise_kernels(rgb, logits)
    msg = crf.messages(q, kernels)
    torch.testing.assert_close(flat(msg), kmat @ flat(q), rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(crf.energy(logits, q, kernels), dense_energy(crf, kmat, logits, q))


def test_parallel_step_is_the_dense_mean_field_update():
    logits, rgb = inputs()
    crf = make_crf()
    randomise(crf)
    kmat = dense_kernel(crf, rgb, 7, 6)
    kernels = crf.pairwise_kernels(rgb, logits)
    q = logits.softmax(1)
    out, q1 = crf.step(logits, q, kernels)
    ref = flat(logits) - kmat @ flat(q) @ crf.compatibility().t()
    torch.testing.assert_close(flat(out), ref, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(q1, out.softmax(1))
    # forward = num_iters such steps from softmax(logits)
    crf.num_iters = 3
    for _ in range(3):
        o, q = crf.step(logits, q, kernels)
    torch.testing.assert_close(crf(logits, rgb), o)


def test_sequential_step_is_the_dense_group_by_group_update():
    logits, rgb = inputs(h=9, w=8)
    crf = make_crf('sequential', spatial=True)
    randomise(crf)
    s = crf.group_period
    assert s == 3  # radius max(2, 2*1) + 1
    kmat = dense_kernel(crf, rgb, 9, 8)
    mu = crf.compatibility()
    q = flat(logits.softmax(1)).clone()
    lf = flat(logits)
    ys, xs = torch.meshgrid(torch.arange(9), torch.arange(8), indexing='ij')
    for a in range(s):
        for c in range(s):
            idx = ((ys % s == a) & (xs % s == c)).flatten().nonzero()[:, 0]
            assert (kmat[:, idx][:, :, idx] == 0).all()  # a group holds no neighbours
            q[:, idx] = (lf[:, idx] - kmat[:, idx] @ q @ mu.t()).softmax(-1)
    _, q1 = crf.step(logits, logits.softmax(1), crf.pairwise_kernels(rgb, logits))
    torch.testing.assert_close(flat(q1), q, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize('seed', range(4))
def test_sequential_mean_field_never_increases_the_free_energy(seed):
    # Any symmetric kernel (weights of either sign, learned features, a spatial filter) and symmetric compatibility.
    torch.manual_seed(seed)
    logits, rgb = inputs(h=8, w=7)
    crf = make_crf('sequential', spatial=True)
    randomise(crf, scale=2.0)
    kernels = crf.pairwise_kernels(rgb, logits)
    kmat = dense_kernel(crf, rgb, 8, 7)
    q = logits.softmax(1)
    energies = [dense_energy(crf, kmat, logits, q)]
    for _ in range(8):
        _, q = crf.step(logits, q, kernels)
        energies.append(dense_energy(crf, kmat, logits, q))
    e = torch.stack(energies)  # [steps + 1, B]
    assert (e[1:] <= e[:-1] + 1e-9).all(), e
    assert (e[0] - e[-1] > 1e-3).all()  # and it does descend


def energy_trace(crf, logits, rgb, steps=6):
    kernels = crf.pairwise_kernels(rgb, logits)
    q = logits.softmax(1)
    e = [crf.energy(logits, q, kernels)]
    for _ in range(steps):
        _, q = crf.step(logits, q, kernels)
        e.append(crf.energy(logits, q, kernels))
    return torch.stack(e)[:, 0]


@pytest.mark.parametrize('weight,scale,need', [(-3.0, 0.5, 6), (3.0, 2.0, 1)])
def test_parallel_mean_field_can_increase_the_free_energy(weight, scale, need):
    # Strong couplings make the parallel update overshoot: repulsive ones (negative weights with Potts, as a learned
    # compatibility may become) on every input tried, attractive Potts ones on some. The sequential update never does.
    increased = 0
    for seed in range(6):
        torch.manual_seed(seed)
        logits, rgb = inputs(b=1, h=6, w=6, scale=scale)
        par = make_crf('parallel', weights=(weight, weight))
        e = energy_trace(par, logits, rgb)
        increased += bool((e[1:] > e[:-1] + 1e-6).any())
        seq = make_crf('sequential', weights=(weight, weight))
        seq.load_state_dict(par.state_dict())
        e = energy_trace(seq, logits, rgb)
        assert (e[1:] <= e[:-1] + 1e-9).all()
    assert increased >= need


def test_gradients_reach_compatibility_kernels_logits_and_guidance():
    logits, rgb = inputs()
    logits.requires_grad_(), rgb.requires_grad_()
    for update in ('parallel', 'sequential'):
        crf = make_crf(update, spatial=True)
        (crf(logits, rgb) * torch.randn(2, 3, 7, 6, dtype=D)).sum().backward()
        grads = {n: p.grad for n, p in crf.named_parameters()}
        assert set(grads) == {
            'compat',
            'kernels.0.weight',
            'kernels.1.weight',
            'kernels.1.spatial',
            'kernels.2.weight',
            'kernels.2.feature_net.0.weight',
            'kernels.2.feature_net.0.bias',
            'kernels.2.feature_net.2.weight',
            'kernels.2.feature_net.2.bias',
        }
        assert all(g is not None and g.abs().sum() > 0 for g in grads.values()), grads
        assert logits.grad.abs().sum() > 0 and rgb.grad.abs().sum() > 0
        logits.grad = rgb.grad = None


def test_compatibility_starts_as_potts_and_stays_symmetric():
    crf = PacCRF(4, kernels=[dict(features='xy')])
    torch.testing.assert_close(crf.compatibility(), 1 - torch.eye(4))
    crf.compat.data.add_(torch.randn(4, 4))
    mu = crf.compatibility()
    torch.testing.assert_close(mu, mu.t())
    fixed = PacCRF(4, kernels=[dict(features='xy')], compat='potts_fixed')
    assert 'compat' not in dict(fixed.named_parameters()) and 'compat' in dict(fixed.named_buffers())


def test_guidance_is_resized_and_xy_kernels_need_none():
    crf = PacCRF(3, 2, kernels=[dict(features='xy', weight=0.5)])
    logits = torch.randn(2, 3, 8, 8)
    out = crf(logits)
    assert out.shape == logits.shape and (out - logits).abs().max() > 1e-3
    app = PacCRF(3, 2)  # default position + colour kernels
    rgb = torch.rand(2, 3, 32, 32)
    small = torch.nn.functional.interpolate(rgb, size=(8, 8), mode='bilinear', antialias=True, align_corners=False)
    torch.testing.assert_close(app(logits, rgb), app(logits, small))
    assert app(logits.bfloat16(), rgb).dtype == torch.bfloat16


def test_config_errors():
    with pytest.raises(ValueError, match='num_classes'):
        PacCRF(1)
    with pytest.raises(ValueError, match='num_iters'):
        PacCRF(3, num_iters=-1)
    with pytest.raises(ValueError, match='update must be one of'):
        PacCRF(3, update='damped')
    with pytest.raises(ValueError, match='compat must be one of'):
        PacCRF(3, compat='full')
    with pytest.raises(ValueError, match='non-empty list'):
        PacCRF(3, kernels=[])
    with pytest.raises(ValueError, match='unknown keys'):
        PacCRF(3, kernels=[dict(features='xy', sigma=3)])
    with pytest.raises(ValueError, match='features must be one of'):
        PacCRF(3, kernels=[dict(features='depth')])
    with pytest.raises(ValueError, match='odd'):
        PacCRF(3, kernels=[dict(kernel_size=4)])
    with pytest.raises(ValueError, match='theta_rgb must be a positive'):
        PacCRF(3, kernels=[dict(features='rgb', theta_rgb=0)])
    with pytest.raises(ValueError, match="theta_rgb applies to features 'rgb'"):
        PacCRF(3, kernels=[dict(features='xy', theta_rgb=10)])
    with pytest.raises(ValueError, match='weight must be a finite number'):
        PacCRF(3, kernels=[dict(weight=float('nan'))])
    with pytest.raises(ValueError, match="feature_channels / hidden_channels apply to features='learned'"):
        PacCRF(3, kernels=[dict(features='xyrgb', feature_channels=4)])
    crf = PacCRF(3)
    with pytest.raises(ValueError, match=r'logits must be \[B, 3, H, W\]'):
        crf(torch.randn(1, 4, 8, 8))
    with pytest.raises(ValueError, match='need the guidance image'):
        crf(torch.randn(1, 3, 8, 8))
    with pytest.raises(ValueError, match='guidance must be'):
        crf(torch.randn(2, 3, 8, 8), torch.rand(1, 3, 8, 8))
