"""Autocast (issue 18 §1): the ops and every core module run forward and backward under ``torch.autocast`` with
bfloat16 and float16, on CPU here and on CUDA where a GPU exists; outputs within the tolerance documented in
docs/ops.md#autocast of float32, gradients finite."""

import math

import pytest
import torch
import torch.nn as nn

from featup_plugin.layers.pac_crf import PacCRF
from featup_plugin.layers.pac_hotswap import pac_hot_swap
from featup_plugin.layers.sft import ResBlockSFT, SFTConditionNet
from featup_plugin.ops import (
    PacConv2d,
    PacConvTranspose2d,
    PacPool2d,
    adaptive_conv,
    local_correlation,
    pac_conv2d,
    pac_pool2d,
)
from featup_plugin.ops._autocast import autocast_args, autocast_dtype
from featup_plugin.training.implicit import fit_implicit
from featup_plugin.upsamplers import JBUStack
from featup_plugin.upsamplers.pac_joint import PacJointUpsampler

DEVICES = ['cpu'] + (['cuda'] if torch.cuda.is_available() else [])
DTYPES = [torch.bfloat16, torch.float16]
# Relative L2 error vs float32 (docs/ops.md#autocast): bfloat16 keeps 8 bits of mantissa, float16 11.
REL_TOL = {torch.bfloat16: 3e-2, torch.float16: 5e-3}
CASES = [(dev, dt) for dev in DEVICES for dt in DTYPES]
IDS = [f'{dev}-{str(dt)[6:]}' for dev, dt in CASES]


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach().double(), b.detach().double()
    return float((a - b).detach().norm() / b.norm().clamp_min(1e-30))


def check_module(dev, dtype, make, run, tol_scale=1.0, out_dtype=None):
    """run(module) -> output; float32 reference, then under autocast: dtype (the autocast one, or float32 where the
    module ends in an op autocast runs in float32 or promotes: softmax, a sum with the float32 input), finiteness,
    error, gradients."""
    torch.manual_seed(0)
    module = make().to(dev)
    torch.manual_seed(1)
    ref = run(module).float()
    module.zero_grad()
    torch.manual_seed(1)
    with torch.autocast(dev, dtype=dtype):
        out = run(module)
    assert out.dtype == (out_dtype or dtype), out.dtype
    assert torch.isfinite(out).all()
    err = rel_err(out, ref)
    assert err <= REL_TOL[dtype] * tol_scale, err
    out.float().square().mean().backward()
    grads = [p.grad for p in module.parameters() if p.requires_grad]
    assert grads and all(g is not None and torch.isfinite(g).all() for g in grads)
    assert any(g.abs().sum() > 0 for g in grads)
    return module, err


@pytest.mark.parametrize('dev,dtype', CASES, ids=IDS)
def test_ops_cast_mixed_inputs_to_the_autocast_dtype(dev, dtype):
    torch.manual_seed(0)
    k = 5
    x = torch.randn(2, 6, 12 + k - 1, 10 + k - 1, device=dev, requires_grad=True)
    f = torch.softmax(torch.randn(2, 12, 10, k * k, device=dev), -1).view(2, 12, 10, k, k).requires_grad_()
    c = torch.randn(2, 6, 12, 10, device=dev, requires_grad=True)
    want_a, want_l = adaptive_conv(x, f), local_correlation(c, x)
    with torch.autocast(dev, dtype=dtype):
        got_a = adaptive_conv(x, f.to(dtype))  # a float32 input and a low-precision one, as in a real model
        got_l = local_correlation(c.to(dtype), x)
    assert got_a.dtype == dtype and got_l.dtype == torch.float32  # correlation logits stay float32
    assert rel_err(got_a, want_a) <= REL_TOL[dtype] and rel_err(got_l, want_l) <= REL_TOL[dtype]
    (got_a.float().sum() + got_l.float().sum()).backward()
    for t in (x, f, c):
        assert t.grad is not None and t.grad.dtype == torch.float32 and torch.isfinite(t.grad).all()
    # PAC conv / pooling, kernel in float32, input in low precision
    inp = torch.randn(2, 6, 9, 9, device=dev)
    kern = torch.rand(2, 9, 9, 9, device=dev)
    w = torch.randn(4, 6, 3, 3, device=dev, requires_grad=True)
    want_c, want_p = pac_conv2d(inp, kern, w, padding=1), pac_pool2d(inp, kern, 3, padding=1)
    with torch.autocast(dev, dtype=dtype):
        got_c = pac_conv2d(inp.to(dtype), kern, w, padding=1)
        got_p = pac_pool2d(inp.to(dtype), kern, 3, padding=1)
    assert got_c.dtype == got_p.dtype == dtype
    assert rel_err(got_c, want_c) <= REL_TOL[dtype] and rel_err(got_p, want_p) <= REL_TOL[dtype]
    got_c.float().sum().backward()
    assert torch.isfinite(w.grad).all() and w.grad.abs().sum() > 0


def test_autocast_rule_leaves_float64_and_the_outside_alone():
    a, b = torch.randn(1, 2, 5, 5, dtype=torch.float64), torch.randn(1, 2, 3, 3)
    assert autocast_dtype('cpu') is None and autocast_args(a, b) == ((a, b), None)  # no autocast: untouched
    with torch.autocast('cpu', dtype=torch.bfloat16):
        assert autocast_dtype('cpu') == torch.bfloat16
        assert autocast_args(a, b) == ((a, b), None)  # float64 present: nothing cast, as autocast
        (cb, none, c), out = autocast_args(b.bfloat16(), None, b.half())
        assert none is None and cb.dtype == c.dtype == torch.float32 and out == torch.bfloat16  # CPU computes in fp32
        assert autocast_args(b.half(), float32=True)[0][0].dtype == torch.float32
        assert autocast_args(b.half(), float32=True)[1] is None  # result stays float32
        x = torch.randn(1, 3, 9, 9, dtype=torch.float64)
        f = torch.randn(1, 7, 7, 3, 3, dtype=torch.float64)
        assert adaptive_conv(x, f).dtype == torch.float64
        with pytest.raises(TypeError, match='same dtype'):  # float64 with float32: the usual message
            adaptive_conv(x, f.float())
    # outside autocast a dtype mismatch is still an error
    with pytest.raises(TypeError, match='local_correlation: center and padded must have the same dtype'):
        local_correlation(torch.randn(1, 2, 3, 3), torch.randn(1, 2, 5, 5).bfloat16())


@pytest.mark.parametrize('dev,dtype', CASES, ids=IDS)
def test_jbu_stack_under_autocast(dev, dtype):
    feats = torch.randn(2, 16, 6, 5, device=dev)
    image = torch.randn(2, 3, 48, 40, device=dev)
    check_module(dev, dtype, lambda: JBUStack(16, num_stages=3), lambda m: m(feats, image))


@pytest.mark.parametrize('dev,dtype', CASES, ids=IDS)
def test_pac_layers_under_autocast(dev, dtype):
    x = torch.randn(2, 6, 12, 12, device=dev)
    g = torch.randn(2, 4, 12, 12, device=dev)
    gt = torch.randn(2, 4, 24, 24, device=dev)
    check_module(dev, dtype, lambda: PacConv2d(6, 8, 3, padding=1), lambda m: m(x, g))
    check_module(
        dev,
        dtype,
        lambda: PacConvTranspose2d(6, 6, 5, stride=2, padding=2, output_padding=1, filler='linear'),
        lambda m: m(x, gt),
    )
    lin = nn.Conv2d(6, 6, 1).to(dev)  # PacPool2d has no parameters: a conv in front carries the gradient
    check_module(dev, dtype, lambda: nn.ModuleList([lin, PacPool2d(3, padding=1)]), lambda m: m[1](m[0](x), g))


@pytest.mark.parametrize('dev,dtype', CASES, ids=IDS)
def test_hot_swapped_model_under_autocast(dev, dtype):
    def make():
        net = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(8, 8, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(8, 5, 3, padding=1),
        )
        return pac_hot_swap(net, ['2', '4'], guidance='0')

    x = torch.randn(2, 3, 16, 16, device=dev)
    check_module(dev, dtype, make, lambda m: m(x))


@pytest.mark.parametrize('dev,dtype', CASES, ids=IDS)
def test_pac_crf_and_joint_upsampler_under_autocast(dev, dtype):
    logits = torch.randn(1, 4, 16, 16, device=dev)
    rgb = torch.rand(1, 3, 16, 16, device=dev)
    crf = lambda: PacCRF(4, num_iters=3)  # noqa: E731
    check_module(dev, dtype, crf, lambda m: m(logits, rgb), tol_scale=2, out_dtype=torch.float32)
    src = torch.randn(1, 8, 6, 6, device=dev)
    img = torch.randn(1, 3, 24, 24, device=dev)
    make = lambda: PacJointUpsampler(8, num_stages=2, channels=8, guidance_hidden=8, kernel_channels=4)  # noqa: E731
    check_module(dev, dtype, make, lambda m: m(src, img))


@pytest.mark.parametrize('dev,dtype', CASES, ids=IDS)
def test_sft_under_autocast(dev, dtype):
    x = torch.randn(2, 8, 12, 12, device=dev)
    img = torch.randn(2, 3, 48, 48, device=dev)

    def make():
        torch.manual_seed(0)
        m = nn.ModuleList([SFTConditionNet(3, cond_channels=8), ResBlockSFT(8, 8)])
        with torch.no_grad():  # away from the identity at init, so the condition matters
            for p in m.parameters():
                p.add_(0.2 * torch.randn_like(p))
        return m

    check_module(dev, dtype, make, lambda m: m[1](x, m[0](img, [(12, 12)])[0]), out_dtype=torch.float32)


@pytest.mark.parametrize('dtype', DTYPES, ids=['bfloat16', 'float16'])
def test_implicit_featup_fits_under_autocast(dtype):
    torch.manual_seed(0)
    img = torch.randn(1, 3, 32, 32)
    net = nn.Sequential(nn.Conv2d(3, 12, 8, 8), nn.GELU(), nn.Conv2d(12, 12, 1)).eval().requires_grad_(False)
    kwargs = dict(views=2, max_pad=4, pca_dim=8, pca_views=6, bank_views=50, hidden=32, seed=0)
    with torch.autocast('cpu', dtype=dtype):
        model, losses = fit_implicit(img, net, steps=5, **kwargs)
        feats = model.features(32)
    assert len(losses) == 5 and all(math.isfinite(v) for v in losses)
    assert torch.isfinite(feats).all() and feats.shape == (1, 12, 32, 32)
