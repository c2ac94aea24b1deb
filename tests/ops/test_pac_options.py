"""PAC layer options: input masks (partial convolution re-weighting, output mask) for the three layers and
channel-wise adapting kernels for PacPool2d, each against a formula written independently with F.unfold /
F.conv2d / F.conv_transpose2d."""

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from featup_plugin.ops.pac import PacConv2d, PacConvTranspose2d, PacPool2d, pac_pool2d_channelwise

D = torch.float64
GEOMS = [  # (kernel_size, stride, padding, dilation)
    ((3, 3), (1, 1), (1, 1), (1, 1)),
    ((5, 3), (2, 1), (2, 0), (1, 2)),
    ((3, 3), (1, 2), (3, 1), (2, 1)),
]


def unfold_taps(t, k, s, p, d):
    """[B, C, T, Ho, Wo] of a [B, C, H, W] map (zero padding)."""
    b, c, h, w = t.shape
    ho = (h + 2 * p[0] - d[0] * (k[0] - 1) - 1) // s[0] + 1
    wo = (w + 2 * p[1] - d[1] * (k[1] - 1) - 1) // s[1] + 1
    return F.unfold(t, k, d, p, s).view(b, c, k[0] * k[1], ho, wo)


def gaussian_oracle(g, k, s, p, d, channel_wise=False):
    """exp(-1/2 ||f_j - f_i||^2) over the window, 0 on padding taps; per channel with ``channel_wise``."""
    cols = unfold_taps(g, k, s, p, d)
    centre = cols[:, :, (k[0] // 2) * k[1] + k[1] // 2][:, :, None]
    sq = (cols - centre) ** 2
    kern = torch.exp(-0.5 * (sq if channel_wise else sq.sum(1)))
    inside = unfold_taps(torch.ones(1, 1, *g.shape[2:], dtype=g.dtype), k, s, p, d)[:, 0]
    return kern * (inside[:, None] if channel_wise else inside)


def random_mask(b, h, w, hole=True):
    m = (torch.rand(b, 1, h, w) > 0.4).to(D)
    if hole:
        m[:, :, : h - 3, : w - 2] = 0  # a hole larger than the windows: outputs with no valid tap
    return m


def partial_oracle(x, g, m, weight, bias, k, s, p, d, normalize=False):
    """Partial PAC written out: K on valid taps only, times n_in / n_valid (or renormalised over the valid taps);
    0 (bias included) where no tap is valid."""
    kern = gaussian_oracle(g, k, s, p, d)  # [B, T, Ho, Wo]
    valid = unfold_taps(m, k, s, p, d)[:, 0]
    inside = unfold_taps(torch.ones_like(m[:1]), k, s, p, d)[:, 0]
    kern = kern * valid
    n_valid = valid.sum(1, keepdim=True)
    has = n_valid > 0
    if normalize:
        kern = kern / kern.sum(1, keepdim=True).masked_fill(~has, 1)
    else:
        kern = kern * torch.where(has, inside.sum(1, keepdim=True) / n_valid.masked_fill(~has, 1), 0)
    cols = unfold_taps(x, k, s, p, d) * kern[:, None]
    if weight is None:
        out = cols.sum(2)
    else:
        out = torch.einsum('bcthw,oct->bohw', cols, weight.flatten(2)) + bias.view(1, -1, 1, 1)
    return out * has, has.to(D)


@pytest.mark.parametrize('geom', GEOMS)
@pytest.mark.parametrize('normalize', [False, True])
def test_masked_conv_and_pool_match_the_partial_formula(geom, normalize):
    k, s, p, d = geom
    x, g, m = torch.randn(2, 3, 10, 9, dtype=D), torch.randn(2, 4, 10, 9, dtype=D), random_mask(2, 10, 9)
    conv = PacConv2d(3, 5, k, s, p, d, normalize_kernel=normalize).double()
    out, out_mask = conv(x, g, mask=m)
    ref, ref_mask = partial_oracle(x, g, m, conv.weight, conv.bias, k, s, p, d, normalize)
    torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(out_mask, ref_mask, rtol=0, atol=0)
    assert 0 < out_mask.mean() < 1  # the hole leaves some outputs without a valid tap
    pool = PacPool2d(k, s, p, d, normalize_kernel=normalize)
    out, out_mask = pool(x, g, mask=m)
    ref, ref_mask = partial_oracle(x, g, m, None, None, k, s, p, d, normalize)
    torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(out_mask, ref_mask, rtol=0, atol=0)


def test_unit_kernel_is_liu_et_al_partial_convolution():
    # K == 1 (constant guidance): out = W^T (X * M) * n_in / n_valid + b where some tap is valid, else 0, with the
    # counts from convolutions of the masks with a ones filter (Liu et al. 2018, padding not counted as holes).
    conv = PacConv2d(3, 4, 3, stride=2, padding=1).double()
    x, m = torch.randn(2, 3, 11, 12, dtype=D), random_mask(2, 11, 12)
    out, out_mask = conv(x, torch.zeros(2, 1, 11, 12, dtype=D), mask=m)
    ones = torch.ones(1, 1, 3, 3, dtype=D)
    n_valid = F.conv2d(m, ones, stride=2, padding=1)
    n_in = F.conv2d(torch.ones_like(m), ones, stride=2, padding=1)
    has = (n_valid > 0).to(D)
    ref = (F.conv2d(x * m, conv.weight, None, 2, 1) * n_in / n_valid.clamp(min=1) + conv.bias.view(1, -1, 1, 1)) * has
    torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(out_mask, has, rtol=0, atol=0)


def test_all_ones_mask_is_the_unmasked_layer_and_mask_broadcasts():
    x, g = torch.randn(2, 3, 9, 8, dtype=D), torch.randn(2, 2, 9, 8, dtype=D)
    for layer in (PacConv2d(3, 4, 3, 2, 1).double(), PacPool2d(5, 1, 2), PacPool2d(3, 1, 1, normalize_kernel=True)):
        out, out_mask = layer(x, g, mask=torch.ones(1, 1, 9, 8, dtype=torch.bool))  # bool, batch 1: broadcast
        torch.testing.assert_close(out, layer(x, g), rtol=1e-12, atol=1e-12)
        assert out_mask.shape == (2, 1, *out.shape[2:]) and (out_mask == 1).all()
    ct = PacConvTranspose2d(3, 2, 5, stride=2, padding=2, output_padding=1).double()
    gt = torch.randn(2, 2, 18, 16, dtype=D)
    out, out_mask = ct(x, gt, mask=torch.ones(2, 1, 9, 8, dtype=D))
    torch.testing.assert_close(out, ct(x, gt), rtol=1e-12, atol=1e-12)
    assert (out_mask == 1).all()


@pytest.mark.parametrize('k,s,p,op', [(3, 2, 1, 1), (5, 2, 2, 1), (5, 3, 1, 0)])
def test_masked_transposed_with_unit_kernel_matches_conv_transpose(k, s, p, op):
    ct = PacConvTranspose2d(3, 4, k, stride=s, padding=p, output_padding=op).double()
    x, m = torch.randn(2, 3, 6, 7, dtype=D), random_mask(2, 6, 7)
    ho, wo = ct.output_size(6, 7)
    out, out_mask = ct(x, torch.full((2, 1, ho, wo), 0.3, dtype=D), mask=m)
    ones = torch.ones(1, 1, k, k, dtype=D)
    n_valid = F.conv_transpose2d(m, ones, None, s, p, op)
    n_in = F.conv_transpose2d(torch.ones_like(m), ones, None, s, p, op)
    has = (n_valid > 0).to(D)
    plain = F.conv_transpose2d(x * m, ct.weight, None, s, p, op)
    ref = (plain * n_in / n_valid.clamp(min=1) + ct.bias.view(1, -1, 1, 1)) * has
    torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(out_mask, has, rtol=0, atol=0)
    assert 0 < has.mean() < 1


def test_masked_transposed_with_guidance_matches_unfold_of_zero_inserted_input():
    ct = PacConvTranspose2d(3, 2, 3, stride=2, padding=1, output_padding=1, normalize_kernel=True).double()
    x, m, g = torch.randn(2, 3, 4, 5, dtype=D), random_mask(2, 4, 5, hole=False), torch.randn(2, 3, 8, 10, dtype=D)
    out, out_mask = ct(x, g, mask=m)

    def zero_insert(t):
        z = torch.zeros(t.shape[0], t.shape[1], 7, 9, dtype=D)
        z[:, :, ::2, ::2] = t
        return F.pad(z, [1, 2, 1, 2])

    kern = gaussian_oracle(g, (3, 3), (1, 1), (1, 1), (1, 1))  # 'same' kernel at the output resolution
    valid = unfold_taps(zero_insert(m), (3, 3), (1, 1), (0, 0), (1, 1))[:, 0]
    kern = kern * valid
    has = valid.sum(1, keepdim=True) > 0
    kern = kern / kern.sum(1, keepdim=True).masked_fill(~has, 1)
    cols = unfold_taps(zero_insert(x), (3, 3), (1, 1), (0, 0), (1, 1)) * kern[:, None]
    w = ct.weight.transpose(0, 1).flip(2, 3)
    ref = (torch.einsum('bcthw,oct->bohw', cols, w.flatten(2)) + ct.bias.view(1, -1, 1, 1)) * has
    torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(out_mask, has.to(D), rtol=0, atol=0)


@pytest.mark.slow
def test_masked_gradcheck_float64():
    conv = PacConv2d(2, 2, 3, padding=1).double()
    m = random_mask(1, 5, 6)
    x = torch.randn(1, 2, 5, 6, dtype=D, requires_grad=True)
    g = torch.randn(1, 2, 5, 6, dtype=D, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, g: conv(x, g, mask=m)[0], (x, g))


def test_masked_pixels_get_no_input_gradient():
    conv = PacConv2d(2, 2, 3, padding=1).double()
    m = random_mask(1, 8, 9)
    x = torch.randn(1, 2, 8, 9, dtype=D, requires_grad=True)
    out, _ = conv(x, torch.randn(1, 2, 8, 9, dtype=D), mask=m)
    (gx,) = torch.autograd.grad(out.sum(), x)
    assert (gx[m.expand_as(gx) == 0] == 0).all() and gx.abs().sum() > 0  # masked pixels get no gradient


@pytest.mark.parametrize('geom', GEOMS)
@pytest.mark.parametrize('normalize', [False, True])
def test_channel_wise_pool_matches_per_channel_formula(geom, normalize):
    k, s, p, d = geom
    x, g = torch.randn(2, 4, 9, 10, dtype=D), torch.randn(2, 4, 9, 10, dtype=D)
    pool = PacPool2d(k, s, p, d, normalize_kernel=normalize, channel_wise=True)
    kern = gaussian_oracle(g, k, s, p, d, channel_wise=True)  # [B, C, T, Ho, Wo]
    if normalize:
        kern = kern / kern.sum(2, keepdim=True)
    torch.testing.assert_close(pool.compute_kernel(g), kern, rtol=1e-12, atol=1e-12)
    ref = (unfold_taps(x, k, s, p, d) * kern).sum(2)
    torch.testing.assert_close(pool(x, g), ref, rtol=1e-12, atol=1e-12)
    # a precomputed kernel, also in pacnet's [B, C, kh, kw, Ho, Wo] layout
    six = kern.view(*kern.shape[:2], *k, *kern.shape[3:])
    torch.testing.assert_close(pool(x, kernel=six), ref, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(pac_pool2d_channelwise(x, kern, k, s, p, d), ref, rtol=1e-12, atol=1e-12)
    # channel c's output depends on guidance channel c only
    g2 = g.clone()
    g2[:, 1] += torch.randn_like(g2[:, 1])
    diff = (pool(x, g2) - pool(x, g)).abs().amax((0, 2, 3))
    assert diff[1] > 1e-3 and diff[[0, 2, 3]].max() == 0


def test_channel_wise_inv_kernel_has_per_channel_parameters():
    pool = PacPool2d(3, padding=1, kernel_type='inv_0.5_-1', channel_wise=True, channels=3).double()
    assert pool.inv_alpha.shape == (3,) and pool.inv_lambda.shape == (3,)
    with torch.no_grad():
        pool.inv_alpha.copy_(torch.tensor([0.5, 1.0, 2.0]))
        pool.inv_lambda.copy_(torch.tensor([-1.0, -2.0, 1.0]))
    x, g = torch.randn(1, 3, 6, 7, dtype=D), torch.randn(1, 3, 6, 7, dtype=D)
    cols = unfold_taps(g, (3, 3), (1, 1), (1, 1), (1, 1))
    sq = (cols - cols[:, :, 4:5]) ** 2
    inside = unfold_taps(torch.ones(1, 1, 6, 7, dtype=D), (3, 3), (1, 1), (1, 1), (1, 1))
    a, lam = pool.inv_alpha.view(1, 3, 1, 1, 1), pool.inv_lambda.view(1, 3, 1, 1, 1)
    kern = (a + (sq + 1e-4) ** (lam / 2)) * inside
    out = pool(x, g)
    torch.testing.assert_close(out, (unfold_taps(x, (3, 3), (1, 1), (1, 1), (1, 1)) * kern).sum(2))
    out.sum().backward()
    assert (pool.inv_alpha.grad != 0).all() and (pool.inv_lambda.grad != 0).all()
    fixed = PacPool2d(3, padding=1, kernel_type='inv_0.5_-1_fixed', channel_wise=True)  # no channels needed
    assert fixed.inv_alpha.dim() == 0 and 'channel_wise=True' in repr(fixed)


def test_channel_wise_with_mask():
    pool = PacPool2d(3, padding=1, channel_wise=True)
    x, g, m = torch.randn(2, 3, 8, 8, dtype=D), torch.randn(2, 3, 8, 8, dtype=D), random_mask(2, 8, 8)
    out, out_mask = pool(x, g, mask=m)
    kern = gaussian_oracle(g, (3, 3), (1, 1), (1, 1), (1, 1), channel_wise=True)
    valid = unfold_taps(m, (3, 3), (1, 1), (1, 1), (1, 1))  # [B, 1, T, H, W]
    inside = unfold_taps(torch.ones(1, 1, 8, 8, dtype=D), (3, 3), (1, 1), (1, 1), (1, 1))
    n_valid = valid.sum(2)
    ratio = torch.where(n_valid > 0, inside.sum(2) / n_valid.clamp(min=1), 0)
    ref = (unfold_taps(x, (3, 3), (1, 1), (1, 1), (1, 1)) * kern * valid).sum(2) * ratio
    torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(out_mask, (n_valid > 0).to(D))


def test_option_errors():
    x, g = torch.randn(1, 3, 8, 8), torch.randn(1, 2, 8, 8)
    conv = PacConv2d(3, 4, 3, padding=1)
    with pytest.raises(ValueError, match=r'mask must be \[B or 1, 1, H, W\]'):
        conv(x, g, mask=torch.ones(1, 3, 8, 8))
    with pytest.raises(ValueError, match=r'mask must be \[B or 1, 1, H, W\]'):
        conv(x, g, mask=torch.ones(1, 1, 4, 4))
    with pytest.raises(TypeError, match='mask must be a torch.Tensor'):
        conv(x, g, mask=[[1]])
    with pytest.raises(ValueError, match='pass guidance'):
        conv(x, kernel=torch.ones(1, 9, 8, 8), mask=torch.ones(1, 1, 8, 8))
    ct = PacConvTranspose2d(3, 2, 3, stride=2, padding=1, output_padding=1)
    with pytest.raises(ValueError, match='pass guidance'):
        ct(x, kernel=torch.ones(1, 9, 16, 16), mask=torch.ones(1, 1, 8, 8))
    with pytest.raises(ValueError, match=r'mask must be \[B or 1, 1, H, W\]'):
        ct(x, torch.randn(1, 2, 16, 16), mask=torch.ones(1, 1, 16, 16))  # the mask is at the input resolution
    with pytest.raises(ValueError, match='channels'):
        PacPool2d(3, padding=1, channel_wise=True)(x, g)  # 2 guidance channels for 3 input channels
    with pytest.raises(ValueError, match='needs channels='):
        PacPool2d(3, kernel_type='inv_1_-1', channel_wise=True)
    with pytest.raises(ValueError, match='channels must be a positive int'):
        PacPool2d(3, channels=0)
    with pytest.raises(ValueError, match='built for 4 channels'):
        PacPool2d(3, padding=1, channels=4)(x, g)
    with pytest.raises(ValueError, match=r'kernel must be \[B=1, C=3, 9'):
        pac_pool2d_channelwise(x, torch.ones(1, 2, 9, 8, 8), 3, padding=1)
    assert isinstance(PacPool2d(3, kernel_type='inv_1_-1', channel_wise=True, channels=2).inv_alpha, nn.Parameter)
