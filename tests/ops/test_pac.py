"""PAC ops: the compiled op against the unfold reference, float64 gradients, the adapting kernels against the
paper's formulas, module semantics (nn.Conv2d / nn.ConvTranspose2d compatibility) and errors."""

import os

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from featup_plugin.ops import _backend
from featup_plugin.ops import pac as pac_mod
from featup_plugin.ops.pac import (
    PacConv2d,
    PacConvTranspose2d,
    PacPool2d,
    pac_conv2d,
    pac_conv_transpose2d,
    pac_kernel2d,
    pac_pool2d,
    parse_kernel_type,
)
from featup_plugin.ops.pac_reference import pac_conv2d_taps, pac_conv2d_unfold

D = torch.float64
# (kernel_size, stride, padding, dilation): square and not, strided, dilated, padding larger than the window
GEOMS = [
    ((3, 3), (1, 1), (1, 1), (1, 1)),
    ((5, 3), (2, 1), (2, 0), (1, 2)),
    ((3, 3), (3, 2), (0, 3), (2, 1)),
    ((1, 1), (1, 1), (0, 0), (1, 1)),
]


def kernel_oracle(g, k, s, p, d, kind='gaussian', alpha=None, lam=None, asym=False, normalize=False, center=None):
    """The adapting kernel written literally with F.unfold (independent of pac_kernel2d's tap loop)."""
    b, c, h, w = g.shape
    cols = F.unfold(g, k, d, p, s)
    ho = (h + 2 * p[0] - d[0] * (k[0] - 1) - 1) // s[0] + 1
    wo = (w + 2 * p[1] - d[1] * (k[1] - 1) - 1) // s[1] + 1
    cols = cols.view(b, c, k[0] * k[1], ho, wo)
    mask = F.unfold(torch.ones(1, 1, h, w, dtype=g.dtype), k, d, p, s).view(1, k[0] * k[1], ho, wo)
    if center is None:
        center = cols[:, :, (k[0] // 2) * k[1] + k[1] // 2][:, :, None]
    diff = cols - center
    if asym:
        diff = diff.clamp(min=0)
    sq = (diff**2).sum(1)
    kern = torch.exp(-0.5 * sq) if kind == 'gaussian' else alpha + (sq + 1e-4) ** (lam / 2)
    kern = kern * mask
    if normalize:
        norm = kern.sum(1, keepdim=True)
        kern = kern / norm.masked_fill(norm == 0, 1)  # pixels whose window lies in the padding stay 0
    return kern


def test_compiled_pac_is_used():
    if os.environ.get('FEATUP_OPS', 'auto') == 'reference':
        pytest.skip('FEATUP_OPS=reference requested')
    assert _backend.get_ext() is not None, _backend.backend_name()
    assert hasattr(torch.ops.featup, 'pac_forward') and hasattr(torch.ops.featup, 'pac_backward')


@pytest.mark.parametrize('geom', GEOMS)
def test_forward_matches_unfold_and_taps(geom):
    k, s, p, d = geom
    x, g = torch.randn(2, 5, 11, 9, dtype=D), torch.randn(2, 3, 11, 9, dtype=D)
    kern = pac_kernel2d(g, k, s, p, d)
    w, b = torch.randn(4, 5, *k, dtype=D), torch.randn(4, dtype=D)
    ref = pac_conv2d_unfold(x, kern, w, b, k, s, p, d)
    torch.testing.assert_close(pac_conv2d(x, kern, w, b, s, p, d), ref, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(pac_conv2d_taps(x, kern, w, b, k, s, p, d), ref, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(
        pac_pool2d(x, kern, k, s, p, d), pac_conv2d_unfold(x, kern, None, None, k, s, p, d), rtol=1e-12, atol=1e-12
    )


@pytest.mark.parametrize('tile_mb', ['0.00002', '0.003', '0.04', '100'])
def test_tiling_is_exact(monkeypatch, tile_mb):
    # 1 column per tile, partial rows, several whole images per tile (2 of 3), everything in one tile.
    monkeypatch.setenv('FEATUP_PAC_TILE_MB', tile_mb)
    k, s, p, d = (3, 5), (2, 1), (1, 2), (1, 1)
    x = torch.randn(3, 4, 7, 8, dtype=D, requires_grad=True)
    kern = pac_kernel2d(torch.randn(3, 2, 7, 8, dtype=D), k, s, p, d).requires_grad_()
    w = torch.randn(6, 4, *k, dtype=D, requires_grad=True)
    ref = pac_conv2d_unfold(x, kern, w, None, k, s, p, d)
    out = pac_conv2d(x, kern, w, None, s, p, d)
    torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-12)
    for a, e in zip(
        torch.autograd.grad((out**2).sum(), (x, kern, w)), torch.autograd.grad((ref**2).sum(), (x, kern, w))
    ):
        torch.testing.assert_close(a, e, rtol=1e-11, atol=1e-11)


def test_float32_random_shapes_against_reference():
    gen = torch.Generator().manual_seed(7)
    for trial in range(12):
        r = lambda lo, hi: int(torch.randint(lo, hi + 1, (1,), generator=gen))  # noqa: E731
        b, c, o, h, w = r(1, 2), r(1, 40), r(1, 24), r(3, 20), r(3, 20)
        k = (2 * r(0, 2) + 1, 2 * r(0, 2) + 1)
        s, d = (r(1, 2), r(1, 2)), (r(1, 2), r(1, 2))
        p = (r(0, 2), r(0, 2))
        if (h + 2 * p[0] - d[0] * (k[0] - 1)) < 1 or (w + 2 * p[1] - d[1] * (k[1] - 1)) < 1:
            continue
        x, g = torch.randn(b, c, h, w), torch.randn(b, 3, h, w)
        x = x if trial % 2 else x.contiguous(memory_format=torch.channels_last)
        kern, wt = pac_kernel2d(g, k, s, p, d), torch.randn(o, c, *k)
        torch.testing.assert_close(
            pac_conv2d(x, kern, wt, None, s, p, d),
            pac_conv2d_unfold(x, kern, wt, None, k, s, p, d),
            rtol=1e-4,
            atol=1e-4,
        )


@pytest.mark.slow
@pytest.mark.parametrize('geom', GEOMS[:3])
def test_gradcheck_compiled_op(geom):
    k, s, p, d = geom
    x = torch.randn(2, 3, 7, 6, dtype=D, requires_grad=True)
    kern = pac_kernel2d(torch.randn(2, 2, 7, 6, dtype=D), k, s, p, d).requires_grad_()
    w = torch.randn(2, 3, *k, dtype=D, requires_grad=True)
    b = torch.randn(2, dtype=D, requires_grad=True)
    assert torch.autograd.gradcheck(lambda *a: pac_conv2d(*a, s, p, d), (x, kern, w, b))
    assert torch.autograd.gradcheck(lambda xx, kk: pac_pool2d(xx, kk, k, s, p, d), (x, kern))


@pytest.mark.slow
@pytest.mark.parametrize('kernel_type,normalize', [('gaussian', False), ('inv_0.5_-1', True), ('inv_1_-2_asym', False)])
def test_gradcheck_input_guidance_weight(kernel_type, normalize):
    # The whole layer: gradients reach the input, the guidance (through the adapting kernel) and the weight.
    layer = PacConv2d(3, 2, 3, stride=(1, 2), padding=1, kernel_type=kernel_type, normalize_kernel=normalize).double()
    x = torch.randn(1, 3, 6, 7, dtype=D, requires_grad=True)
    g = torch.randn(1, 2, 6, 7, dtype=D, requires_grad=True)
    w = layer.weight.detach().clone().requires_grad_()

    def f(x, g, w):
        return pac_conv2d(x, layer.compute_kernel(g), w, layer.bias, layer.stride, layer.padding)

    assert torch.autograd.gradcheck(f, (x, g, w))


@pytest.mark.slow
def test_gradcheck_transposed_and_shared():
    x = torch.randn(1, 2, 4, 3, dtype=D, requires_grad=True)
    layer = PacConvTranspose2d(2, 3, 3, stride=2, padding=1, output_padding=1, normalize_kernel=True).double()
    g = torch.randn(1, 2, 8, 6, dtype=D, requires_grad=True)
    w = layer.weight.detach().clone().requires_grad_()
    assert torch.autograd.gradcheck(
        lambda x, g, w: pac_conv_transpose2d(x, layer.compute_kernel(g, (4, 3)), w, None, 2, 1, 1), (x, g, w)
    )
    shared = PacConv2d(2, 2, 3, padding=1, shared_filters=True).double()
    ws = shared.weight.detach().clone().requires_grad_()
    g2 = torch.randn(1, 2, 4, 3, dtype=D, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda x, g, w: pac_conv2d(x, shared.compute_kernel(g), w, None, 1, 1, shared_filters=True), (x, g2, ws)
    )


@pytest.mark.parametrize('kernel_type', ['gaussian', 'gaussian_asym', 'inv_0.5_-1', 'inv_2_1_asym_fixed'])
@pytest.mark.parametrize('normalize', [False, True])
def test_adapting_kernel_matches_formula(kernel_type, normalize):
    spec = parse_kernel_type(kernel_type)
    g = torch.randn(2, 4, 9, 8, dtype=D)
    for k, s, p, d in GEOMS[:3]:
        ours = pac_kernel2d(g, k, s, p, d, kernel_type, normalize_kernel=normalize)
        ref = kernel_oracle(g, k, s, p, d, spec['kind'], spec['alpha'], spec['lambda_'], spec['asym'], normalize)
        torch.testing.assert_close(ours, ref, rtol=1e-12, atol=1e-12)


def test_smoothed_centre():
    g = torch.randn(1, 3, 9, 10, dtype=D)
    layer = PacPool2d(5, padding=2, smooth_kernel_type='average_3').double()
    # The centre is the 3x3 zero-padded box average of the guidance (centres lie inside the image here).
    sm = F.avg_pool2d(g, 3, 1, 1, count_include_pad=True)
    ref = kernel_oracle(g, (5, 5), (1, 1), (2, 2), (1, 1), center=sm[:, :, None])
    # (the 1/9 filter was made in float32, then cast)
    torch.testing.assert_close(layer.compute_kernel(g), ref, rtol=1e-7, atol=1e-7)
    full = PacPool2d(5, padding=2, smooth_kernel_type='full_3').double()
    assert isinstance(full.smooth_kernel, nn.Parameter)
    torch.testing.assert_close(full.compute_kernel(g), ref, rtol=1e-7, atol=1e-7)  # initialised to the average
    gauss = PacPool2d(3, padding=1, smooth_kernel_type='gaussian')
    assert torch.allclose(gauss.smooth_kernel.sum(), torch.tensor(1.0)) and not isinstance(
        gauss.smooth_kernel, nn.Parameter
    )


def test_conv2d_state_dict_loads_and_unit_kernel_is_conv():
    conv = nn.Conv2d(4, 6, 3, stride=2, padding=1, dilation=1).double()
    layer = PacConv2d(4, 6, 3, stride=2, padding=1).double()
    layer.load_state_dict(conv.state_dict())  # strict: same names and shapes
    x = torch.randn(2, 4, 9, 10, dtype=D)
    ones = torch.ones(2, 9, 5, 5, dtype=D)
    torch.testing.assert_close(layer(x, kernel=ones), conv(x), rtol=1e-12, atol=1e-12)
    # A constant guidance gives K = 1 on every tap inside the image: the conv again.
    torch.testing.assert_close(layer(x, torch.full((2, 3, 9, 10), 0.7, dtype=D)), conv(x), rtol=1e-12, atol=1e-12)
    same = nn.Conv2d(4, 5, (3, 5), padding='same', dilation=2, bias=False).double()
    pac = PacConv2d.from_conv(same)
    assert pac.padding == (2, 4) and pac.bias is None
    torch.testing.assert_close(pac(x, torch.zeros(2, 1, 9, 10, dtype=D)), same(x), rtol=1e-12, atol=1e-12)


def test_guidance_changes_the_output():
    layer = PacConv2d(3, 4, 3, padding=1)
    x, g = torch.randn(1, 3, 8, 8), torch.randn(1, 2, 8, 8)
    assert (layer(x, g) - layer(x, torch.zeros_like(g))).abs().max() > 1e-3


def test_transposed_equals_conv_transpose_with_unit_kernel():
    for k, s, p, op, d in [(3, 2, 1, 1, 1), (5, (2, 3), (1, 2), (1, 0), 1), (3, 1, 0, 0, 2), (3, 3, 4, 2, 1)]:
        ct = nn.ConvTranspose2d(4, 6, k, s, p, op, dilation=d).double()
        layer = PacConvTranspose2d(4, 6, k, s, p, op, d).double()
        layer.load_state_dict(ct.state_dict())
        x = torch.randn(2, 4, 5, 6, dtype=D)
        ho, wo = layer.output_size(5, 6)
        assert (ho, wo) == tuple(ct(x).shape[2:])
        kk = layer.kernel_size[0] * layer.kernel_size[1]
        torch.testing.assert_close(layer(x, kernel=torch.ones(2, kk, ho, wo, dtype=D)), ct(x), rtol=1e-12, atol=1e-12)
        # Zero guidance gives K = 1 on every tap, including taps beyond the output border that still read input
        # samples when padding > d*(k-1)/2 (the guidance is zero-padded there, as in PAC).
        torch.testing.assert_close(layer(x, torch.zeros(2, 1, ho, wo, dtype=D)), ct(x), rtol=1e-12, atol=1e-12)


def test_linear_filler_tent_values_by_hand():
    # 1-D tent max(0, 1 - |x - c| / f), written out by hand: k=5, f=2 -> c=2.5; k=9, f=4 -> c=4.5; k=5, f=3 -> c=2
    tent = pac_mod.bilinear_kernel1d
    torch.testing.assert_close(tent(5, 2), torch.tensor([0, 1, 3, 3, 1], dtype=D) / 4)
    torch.testing.assert_close(tent(9, 4), torch.tensor([0, 1, 3, 5, 7, 7, 5, 3, 1], dtype=D) / 8)
    torch.testing.assert_close(tent(5, 3), torch.tensor([1, 2, 3, 2, 1], dtype=D) / 3)
    torch.testing.assert_close(tent(3, 1), torch.tensor([0, 1, 0], dtype=D))
    layer = PacConvTranspose2d(3, 3, (5, 3), stride=(2, 1), padding=(2, 1), output_padding=(1, 0), filler='linear')
    want = (torch.tensor([0, 1, 3, 3, 1], dtype=D) / 4)[:, None] * torch.tensor([0, 1, 0], dtype=D)
    for ci in range(3):
        for co in range(3):
            torch.testing.assert_close(layer.weight[ci, co].double(), want if ci == co else 0 * want, rtol=0, atol=0)
    assert (layer.bias == 0).all()
    shared = PacConvTranspose2d(3, 3, 5, stride=2, padding=2, output_padding=1, filler='linear', shared_filters=True)
    assert shared.weight.shape == (1, 1, 5, 5)
    t1 = torch.tensor([0, 1, 3, 3, 1], dtype=D) / 4
    torch.testing.assert_close(shared.weight[0, 0].double(), t1[:, None] * t1, rtol=0, atol=0)
    assert "filler='linear'" in repr(layer) and 'filler' not in repr(PacConvTranspose2d(3, 3, 5))


# (factor, kernel_size, padding, output_padding): x2 and x4 (even: 2f+1, f/2+1, 1), x3 (odd: 2f-1, (f-1)/2, 0)
UPSAMPLE_GEOMS = [(2, 5, 2, 1), (4, 9, 3, 1), (3, 5, 1, 0)]


@pytest.mark.parametrize('factor,k,p,op', UPSAMPLE_GEOMS)
def test_linear_filler_is_bilinear_upsampling(factor, k, p, op):
    layer = PacConvTranspose2d(3, 3, k, stride=factor, padding=p, output_padding=op, filler='linear').double()
    layer.reset_parameters()  # the tent in float64 (1/3 is not exact in float32)
    x = torch.randn(2, 3, 6, 7, dtype=D)
    ho, wo = layer.output_size(6, 7)
    assert (ho, wo) == (6 * factor, 7 * factor)
    ref = F.interpolate(x, scale_factor=factor, mode='bilinear', align_corners=False)
    # K == 1 given as a kernel, and computed from a constant guidance (Gaussian of zero differences)
    outs = [layer(x, kernel=torch.ones(2, k * k, ho, wo, dtype=D)), layer(x, torch.full((2, 2, ho, wo), 0.3, dtype=D))]
    b = factor // 2  # the outer f // 2 output pixels read the zero padding, where bilinear clamps
    for out in outs:
        torch.testing.assert_close(out[..., b:-b, b:-b], ref[..., b:-b, b:-b], rtol=1e-12, atol=1e-12)
        # everywhere: the plain transposed convolution with the same tent weights
        plain = F.conv_transpose2d(x, layer.weight, layer.bias, factor, p, op)
        torch.testing.assert_close(out, plain, rtol=1e-12, atol=1e-12)
    assert (outs[0][..., 0, :] - ref[..., 0, :]).abs().max() > 1e-3  # the border does differ


def test_filler_errors_and_default_unchanged():
    with pytest.raises(ValueError, match='filler must be one of'):
        PacConvTranspose2d(3, 3, 5, stride=2, padding=2, filler='bilinear')
    with pytest.raises(ValueError, match="filler='linear'.*in_channels == out_channels"):
        PacConvTranspose2d(3, 4, 5, stride=2, padding=2, filler='linear')
    with pytest.raises(ValueError, match="filler='linear'.*kernel_size >= "):
        PacConvTranspose2d(3, 3, 3, stride=2, padding=1, filler='linear')  # a 3-tap kernel truncates the x2 tent
    with pytest.raises(ValueError, match="filler='linear'.*dilation"):
        PacConvTranspose2d(3, 3, 5, stride=2, padding=2, dilation=2, filler='linear')
    # The default ('uniform') is nn.ConvTranspose2d's initialisation, draw for draw.
    for kw in ({}, {'filler': 'uniform'}):
        torch.manual_seed(0)
        layer = PacConvTranspose2d(3, 5, 5, stride=2, padding=2, **kw)
        torch.manual_seed(0)
        ct = nn.ConvTranspose2d(3, 5, 5, stride=2, padding=2)
        torch.testing.assert_close(layer.weight, ct.weight, rtol=0, atol=0)
        torch.testing.assert_close(layer.bias, ct.bias, rtol=0, atol=0)
    layer = PacConvTranspose2d(2, 2, 5, stride=2, padding=2, filler='linear')
    nn.init.normal_(layer.weight)
    layer.reset_parameters()  # re-applies the filler
    t1 = torch.tensor([0, 1, 3, 3, 1], dtype=D) / 4
    torch.testing.assert_close(layer.weight[1, 1].double(), t1[:, None] * t1)
    assert layer.weight[0, 1].abs().max() == 0


def test_transposed_matches_unfold_of_zero_inserted_input():
    layer = PacConvTranspose2d(3, 2, 3, stride=2, padding=1, output_padding=1).double()
    x, g = torch.randn(2, 3, 4, 5, dtype=D), torch.randn(2, 4, 8, 10, dtype=D)
    kern = layer.compute_kernel(g, (4, 5))
    z = torch.zeros(2, 3, 7, 9, dtype=D)
    z[:, :, ::2, ::2] = x
    z = F.pad(z, [1, 2, 1, 2])
    ref = pac_conv2d_unfold(
        z, kern, layer.weight.transpose(0, 1).flip(2, 3), layer.bias, (3, 3), (1, 1), (0, 0), (1, 1)
    )
    torch.testing.assert_close(layer(x, g), ref, rtol=1e-12, atol=1e-12)


def test_normalized_pool_with_uniform_kernel_is_average_pool():
    x = torch.randn(2, 3, 7, 9, dtype=D)
    pool = PacPool2d(3, stride=2, padding=1, normalize_kernel=True)
    torch.testing.assert_close(
        pool(x, torch.zeros(2, 1, 7, 9, dtype=D)),
        F.avg_pool2d(x, 3, 2, 1, count_include_pad=False),
        rtol=1e-12,
        atol=1e-12,
    )


def test_shared_filters_and_inv_parameters():
    layer = PacConv2d(3, 3, 3, padding=1, shared_filters=True, kernel_type='inv_1_-1')
    assert layer.weight.shape == (1, 1, 3, 3)
    x, g = torch.randn(1, 3, 6, 6), torch.randn(1, 2, 6, 6)
    kern = layer.compute_kernel(g)
    ref = pac_conv2d_unfold(
        x, kern, torch.eye(3)[:, :, None, None] * layer.weight, layer.bias, (3, 3), (1, 1), (1, 1), (1, 1)
    )
    out = layer(x, g)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    out.sum().backward()
    assert layer.inv_alpha.grad is not None and layer.inv_lambda.grad is not None
    fixed = PacConv2d(3, 3, 3, kernel_type='inv_1_-1_fixed')
    assert 'inv_alpha' in dict(fixed.named_buffers()) and 'inv_alpha' not in dict(fixed.named_parameters())


def test_reference_fallback_and_low_precision(monkeypatch):
    layer = PacConv2d(5, 4, 3, stride=2, padding=1)
    x, g = torch.randn(2, 5, 9, 8), torch.randn(2, 3, 9, 8)
    compiled = layer(x, g)
    monkeypatch.setattr(pac_mod, '_use_compiled', lambda t: False)
    torch.testing.assert_close(layer(x, g), compiled, rtol=1e-5, atol=1e-5)
    monkeypatch.undo()
    out16 = layer.to(torch.bfloat16)(x.bfloat16(), g.bfloat16())
    assert out16.dtype == torch.bfloat16
    torch.testing.assert_close(out16.float(), compiled, rtol=0.05, atol=0.05)


def test_tracing_records_plain_pytorch_ops():
    layer = PacConv2d(3, 4, 3, stride=2, padding=1)
    x, g = torch.randn(1, 3, 9, 8), torch.randn(1, 2, 9, 8)
    traced = torch.jit.trace(layer, (x, g), check_trace=False)
    assert 'PythonOp' not in str(traced.graph)  # the tap loop, not the compiled autograd Function
    x2, g2 = torch.randn(1, 3, 9, 8), torch.randn(1, 2, 9, 8)
    torch.testing.assert_close(traced(x2, g2), layer(x2, g2), rtol=1e-5, atol=1e-5)


def test_errors():
    x, g = torch.randn(1, 3, 8, 8), torch.randn(1, 2, 8, 8)
    with pytest.raises(ValueError, match='odd'):
        PacConv2d(3, 4, 2)
    with pytest.raises(ValueError, match='kernel_type'):
        PacConv2d(3, 4, 3, kernel_type='laplace')
    with pytest.raises(ValueError, match='kernel_type'):
        PacConv2d(3, 4, 3, kernel_type='inv_a_b')
    with pytest.raises(ValueError, match='smooth_kernel_type'):
        PacConv2d(3, 4, 3, smooth_kernel_type='box')
    with pytest.raises(ValueError, match='in_channels == out_channels'):
        PacConv2d(3, 4, 3, shared_filters=True)
    with pytest.raises(TypeError, match='stride'):
        PacConv2d(3, 4, 3, stride=1.5)
    layer = PacConv2d(3, 4, 3, padding=1)
    with pytest.raises(ValueError, match='exactly one'):
        layer(x)
    with pytest.raises(ValueError, match='exactly one'):
        layer(x, g, kernel=torch.ones(1, 9, 8, 8))
    with pytest.raises(ValueError, match='guidance'):
        layer(x, torch.randn(1, 2, 4, 4))
    with pytest.raises(TypeError, match='floating point'):
        layer(x.long(), g)
    with pytest.raises(TypeError, match='same dtype'):
        layer(x.double(), g.double())  # weight is float32
    with pytest.raises(ValueError, match='weight must be'):
        PacConv2d(5, 4, 3, padding=1)(x, g)
    with pytest.raises(ValueError, match='kernel must be'):
        layer(x, kernel=torch.ones(1, 9, 7, 8))
    with pytest.raises(ValueError, match='too small'):
        PacConv2d(3, 4, 5)(torch.randn(1, 3, 3, 3), torch.randn(1, 1, 3, 3))
    with pytest.raises(ValueError, match='output_padding'):
        PacConvTranspose2d(3, 4, 3, stride=2, output_padding=2)
    with pytest.raises(ValueError, match='output resolution'):
        PacConvTranspose2d(3, 4, 3, stride=2, padding=1)(x, torch.randn(1, 2, 8, 8))
    with pytest.raises(ValueError, match='groups'):
        PacConv2d.from_conv(nn.Conv2d(4, 4, 3, groups=2))
    with pytest.raises(TypeError, match='nn.Conv2d'):
        PacConv2d.from_conv(nn.Linear(3, 3))


@pytest.mark.cuda
def test_cuda_matches_cpu_and_memory_is_bounded(monkeypatch):
    # A 4 MiB tile: the default CUDA tile (64 MiB) exceeds this case's unfold buffer, so the bound would be vacuous.
    tile = 4 * 2**20
    monkeypatch.setenv('FEATUP_PAC_TILE_MB', '4')
    torch.manual_seed(0)
    layer = PacConv2d(64, 64, 5, padding=2)
    x, g = torch.randn(2, 64, 64, 64, requires_grad=True), torch.randn(2, 3, 64, 64)
    out = layer(x, g)
    out.square().sum().backward()
    lc = PacConv2d(64, 64, 5, padding=2).cuda()
    lc.load_state_dict(layer.state_dict())
    xc = x.detach().cuda().requires_grad_()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    oc = lc(xc, g.cuda())
    oc.square().sum().backward()
    peak = torch.cuda.max_memory_allocated() - base
    torch.testing.assert_close(oc.cpu(), out, rtol=1e-3, atol=1e-3)
    torch.testing.assert_close(xc.grad.cpu(), x.grad, rtol=1e-3, atol=1e-3)
    torch.testing.assert_close(lc.weight.grad.cpu(), layer.weight.grad, rtol=1e-3, atol=1e-2)
    # Tiles (a column buffer and its gradient) plus O(C*H*W) tensors (input, output, their gradients, the
    # adapting kernel), far below the unfold reference's B*C*k*k*H*W buffer.
    x_bytes = xc.numel() * 4
    unfold_bytes = 2 * 64 * 25 * 64 * 64 * 4
    assert peak <= 2 * tile + 10 * x_bytes < unfold_bytes, (peak, tile, x_bytes)


@pytest.mark.cuda
def test_cuda_gradcheck_float64():
    x = torch.randn(2, 3, 7, 6, dtype=D, device='cuda', requires_grad=True)
    kern = pac_kernel2d(
        torch.randn(2, 2, 7, 6, dtype=D, device='cuda'), (3, 5), (2, 1), (1, 2), (1, 1)
    ).requires_grad_()
    w = torch.randn(2, 3, 3, 5, dtype=D, device='cuda', requires_grad=True)
    assert torch.autograd.gradcheck(lambda *a: pac_conv2d(*a, None, (2, 1), (1, 2)), (x, kern, w))
    assert torch.autograd.gradcheck(lambda xx, kk: pac_pool2d(xx, kk, (3, 5), (2, 1), (1, 2)), (x, kern))


def test_compiled_outputs_are_not_views_and_allow_inplace_ops():
    # An in-place op right after a PAC layer (torchvision VGG's ReLU(inplace=True)) must work under autograd.
    torch.manual_seed(0)
    layer = PacConv2d(4, 3, 3, padding=1)
    x, g = torch.randn(2, 4, 9, 7, requires_grad=True), torch.randn(2, 2, 9, 7)
    out = layer(x, g)
    assert out._base is None
    torch.relu_(out).sum().backward()
    ref = PacConv2d(4, 3, 3, padding=1)
    ref.load_state_dict(layer.state_dict())
    x2 = x.detach().clone().requires_grad_()
    torch.relu(ref(x2, g)).sum().backward()
    torch.testing.assert_close(x.grad, x2.grad)
    torch.testing.assert_close(layer.weight.grad, ref.weight.grad)
