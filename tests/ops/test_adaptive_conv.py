"""The JBU op: exactness against the unfold reference, float64 gradients, errors, backends."""

import os
import random
import subprocess
import sys
import warnings

import pytest
import torch

import featup_plugin.ops as ops
from featup_plugin.ops import _backend, adaptive_conv, local_correlation
from featup_plugin.ops.adaptive_conv import flip_taps
from featup_plugin.ops.reference import (
    adaptive_conv_taps,
    adaptive_conv_unfold,
    local_correlation_taps,
    local_correlation_unfold,
)
from tests import ROOT

# fp32 tolerance: each output sums k*k*(1 or C) products; we compare with
# |ours - ref| <= FP32_ATOL + FP32_RTOL * |ref|, generous for accumulation-order differences.
FP32_ATOL, FP32_RTOL = 1e-4, 1e-4


def make(b, c, h, w, k, dtype=torch.float64, device='cpu', requires_grad=False):
    x = torch.randn(b, c, h + k - 1, w + k - 1, dtype=dtype, device=device, requires_grad=requires_grad)
    f = torch.randn(b, h, w, k, k, dtype=dtype, device=device, requires_grad=requires_grad)
    return x, f


def test_compiled_backend_is_used():
    # Unless the reference is requested, the tests must exercise compiled code, not the fallback.
    if os.environ.get('FEATUP_OPS', 'auto') == 'reference':
        pytest.skip('FEATUP_OPS=reference requested')
    assert _backend.get_ext() is not None, ops.backend_name()
    assert not ops.backend_name().startswith('reference')


@pytest.mark.parametrize('k', [1, 3, 5, 7])
@pytest.mark.parametrize('shape', [(1, 1, 1, 1), (2, 3, 5, 6), (1, 4, 7, 3), (3, 2, 2, 9)])
def test_forward_matches_unfold_reference_float64(shape, k):
    x, f = make(*shape, k)
    torch.testing.assert_close(adaptive_conv(x, f), adaptive_conv_unfold(x, f), rtol=1e-12, atol=1e-12)
    g = torch.randn(shape[0], shape[1], shape[2], shape[3], dtype=torch.float64)
    torch.testing.assert_close(local_correlation(g, x), local_correlation_unfold(g, x), rtol=1e-12, atol=1e-12)


def test_randomised_float32_against_reference():
    rng = random.Random(1234)
    for trial in range(40):
        b, c = rng.randint(1, 3), rng.randint(1, 64)
        h, w = rng.randint(1, 45), rng.randint(1, 45)  # odd, even, non-square, wider than one vector block
        k = rng.choice([3, 5, 7])
        x, f = make(b, c, h, w, k, dtype=torch.float32)
        layout = trial % 4
        if layout == 1:  # channels_last input
            x = x.contiguous(memory_format=torch.channels_last)
        elif layout == 2:  # non-contiguous slices of bigger tensors
            x = torch.randn(b, c + 2, h + k + 1, w + k + 3)[:, 1 : c + 1, 1 : h + k, 2 : w + k + 1]
            f = torch.randn(b, h, w, k + 1, k + 1)[..., :k, 1:]
            assert not x.is_contiguous() and not f.is_contiguous()
        elif layout == 3:  # filters as a permuted tap-major tensor (what the JBU upsampler passes)
            f = torch.randn(b, k * k, h, w).permute(0, 2, 3, 1).reshape(b, h, w, k, k)
        ref = adaptive_conv_unfold(x.double(), f.double())
        out = adaptive_conv(x, f)
        assert out.dtype == torch.float32 and out.shape == (b, c, h, w)
        assert (out.double() - ref).abs().le(FP32_ATOL + FP32_RTOL * ref.abs()).all(), (b, c, h, w, k, layout)
        if layout == 1:
            assert out.is_contiguous(memory_format=torch.channels_last)
        g = torch.randn(b, c, h, w)
        refc = local_correlation_unfold(g.double(), x.double())
        outc = local_correlation(g, x)
        tol = FP32_ATOL * c**0.5 + FP32_RTOL * refc.abs()
        assert (outc.double() - refc).abs().le(tol).all(), (b, c, h, w, k, layout)


@pytest.mark.parametrize('k', [3, 5, 7])
@pytest.mark.parametrize('shape', [(1, 2, 3, 4), (2, 3, 5, 2)])
def test_gradcheck_float64(shape, k):
    x, f = make(*shape, k, requires_grad=True)
    assert torch.autograd.gradcheck(adaptive_conv, (x, f), eps=1e-6, atol=1e-8)
    g = torch.randn(*shape, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(local_correlation, (g, x), eps=1e-6, atol=1e-8)


def test_every_filter_tap_gets_the_right_gradient():
    # FeatUp's CUDA kernel indexes taps with blockIdx.z * blockIdx.z, so only taps {0,1,4,...,36} got gradient.
    x, f = make(2, 5, 6, 7, 7, requires_grad=True)
    go = torch.randn(2, 5, 6, 7, dtype=torch.float64)
    adaptive_conv(x, f).backward(go)
    gx, gf = x.grad.clone(), f.grad.clone()
    x.grad = f.grad = None
    adaptive_conv_unfold(x, f).backward(go)
    torch.testing.assert_close(gf, f.grad)
    torch.testing.assert_close(gx, x.grad)
    assert (gf.abs().sum((0, 1, 2)) > 0).all()


def test_gradgradcheck_float64():
    x, f = make(1, 2, 3, 3, 3, requires_grad=True)
    assert torch.autograd.gradgradcheck(adaptive_conv, (x, f), eps=1e-6, atol=1e-7)


def test_flip_taps_definition():
    k, kernel = 3, torch.randn(2, 9, 4, 5, dtype=torch.float64)
    out = flip_taps(kernel, k)
    assert out.shape == (2, 9, 6, 7)
    for i in range(k):
        for j in range(k):
            for y in range(6):
                for x in range(7):
                    h, w = y + i - (k - 1), x + j - (k - 1)
                    want = kernel[:, (k - 1 - i) * k + (k - 1 - j), h, w] if 0 <= h < 4 and 0 <= w < 5 else 0
                    torch.testing.assert_close(out[:, i * k + j, y, x], torch.as_tensor(want).expand(2).double())


def test_tap_loop_reference_equals_unfold_reference():
    x, f = make(2, 3, 4, 5, 5)
    torch.testing.assert_close(adaptive_conv_taps(x, f), adaptive_conv_unfold(x, f))
    g = torch.randn(2, 3, 4, 5, dtype=torch.float64)
    torch.testing.assert_close(local_correlation_taps(g, x), local_correlation_unfold(g, x))


@pytest.fixture(params=['avx512', 'avx2', 'baseline'])
def cpu_code_path(request):
    """Runs the test with the compiled CPU kernels forced to one instruction set (restored after); skips where
    the CPU lacks it or no compiled module is loaded."""
    ext = _backend.get_ext()
    if ext is None or not hasattr(ext, 'set_cpu_isa'):
        pytest.skip('reference backend in use')
    before = ext.cpu_isa()
    try:
        ext.set_cpu_isa(request.param)
    except RuntimeError as exc:
        assert 'does not support' in str(exc)
        pytest.skip(f'this CPU has no {request.param} path')
    yield ext
    ext.set_cpu_isa(before)


def test_every_cpu_code_path(cpu_code_path):
    for dtype in (torch.float32, torch.float64, torch.bfloat16):
        for b, c, h, w, k in [(2, 9, 13, 70, 7), (1, 4, 33, 16, 3), (1, 5, 5, 8, 5)]:
            x, f = make(b, c, h, w, k, dtype=torch.float64)
            ref = adaptive_conv_unfold(x.to(dtype).double(), f.to(dtype).double())
            tol = 1e-10 if dtype == torch.float64 else 1e-3 if dtype == torch.float32 else 0.5
            torch.testing.assert_close(adaptive_conv(x.to(dtype), f.to(dtype)).double(), ref, rtol=tol, atol=tol)
            g = torch.randn(b, c, h, w, dtype=torch.float64)
            refc = local_correlation_unfold(g.to(dtype).double(), x.to(dtype).double())
            torch.testing.assert_close(
                local_correlation(g.to(dtype), x.to(dtype)).double(), refc, rtol=tol, atol=tol * c
            )
    with pytest.raises(RuntimeError, match='unknown CPU code path'):
        cpu_code_path.set_cpu_isa('sse9')


def _tap_major_filters(f):
    """The same filters [B, H, W, k, k] as a view of a contiguous tap-major [B, k*k, H, W] tensor (the JBU
    upsampler's layout: the op's kernel view is then contiguous)."""
    return f.permute(0, 3, 4, 1, 2).contiguous().permute(0, 3, 4, 1, 2)


def _copies_in(fn):
    """Names of the copying aten ops that fn dispatches (the op entry's ``.contiguous()`` is a clone + copy_)."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        fn()
    return {e.name for e in prof.events() if e.name in ('aten::clone', 'aten::copy_', 'aten::contiguous')}


PIXEL_MAJOR_DTYPES = [torch.float64, torch.float32, torch.bfloat16, torch.float16]


def test_pixel_major_kernel_is_read_in_place_and_bitwise_equal(cpu_code_path):
    """FeatUp's filters [B, H, W, k, k] reach the op as a pixel-major kernel view (the k*k taps of a pixel adjacent),
    which the CPU kernels read without a transposed copy: forward, input gradient (the transposed op on the same
    saved view) and filter gradient equal those of the contiguous tap-major kernel bit for bit, on every code path,
    for W a multiple of every vector width (32), not (37) and narrower than a vector (10), H not a multiple of the
    row block, channels not a multiple of the channel block and 2 or 3 64-channel tiles (where, at some k, the ops
    make one contiguous copy instead of gathering per tile: pixel_major_in_place)."""
    torch.manual_seed(0)
    for dtype in PIXEL_MAJOR_DTYPES:
        for k in (1, 3, 5, 7):
            for b, c, h, w in [(2, 5, 9, 32), (2, 6, 7, 37), (2, 3, 5, 10), (2, 70, 5, 37), (2, 140, 3, 21)]:
                x, f = make(b, c, h, w, k, dtype=dtype)
                ft = _tap_major_filters(f)
                kv = f.permute(0, 3, 4, 1, 2).reshape(b, k * k, h, w)
                assert kv.stride() == (h * w * k * k, 1, w * k * k, k * k) or k == 1
                out = adaptive_conv(x, f)
                assert torch.equal(out, adaptive_conv(x, ft)), (dtype, k, h, w)
                xa, fa = x.clone().requires_grad_(), f.clone().requires_grad_()
                xb, fb = x.clone().requires_grad_(), ft.detach().requires_grad_()
                go = torch.randn(out.shape, dtype=dtype)
                gxa, gfa = torch.autograd.grad(adaptive_conv(xa, fa), (xa, fa), go)
                gxb, gfb = torch.autograd.grad(adaptive_conv(xb, fb), (xb, fb), go)
                assert torch.equal(gxa, gxb), (dtype, k, h, w)
                assert torch.equal(gfa, gfb), (dtype, k, h, w)
                if dtype == torch.float64:
                    torch.testing.assert_close(out, adaptive_conv_unfold(x, f), rtol=1e-12, atol=1e-12)
    # and no copy of the kernel: the pixel-major view goes to the kernels as is (the transposed op too, at k >= 5
    # and up to two channel tiles)
    x, f = make(2, 70, 9, 37, 7)
    kv = f.permute(0, 3, 4, 1, 2).reshape(2, 49, 9, 37)
    grad = torch.randn(2, 4, 9, 37, dtype=torch.float64)
    assert not _copies_in(lambda: torch.ops.featup.adaptive_conv(x, kv))
    assert not _copies_in(lambda: torch.ops.featup.adaptive_conv_transpose(grad, kv))
    assert _copies_in(lambda: torch.ops.featup.adaptive_conv(x, kv.transpose(2, 3).contiguous().transpose(2, 3)))


def test_kernels_in_neither_layout_are_made_contiguous(cpu_code_path):
    """Filters whose kernel view is neither contiguous nor pixel-major (H and W transposed, taps sliced out of a
    wider window or tap axis, batch-sliced) still give the reference's answer, forward and gradients; size-1
    dimensions (B = 1, H = 1, W = 1, k = 1) with arbitrary strides are read as the layout they are."""
    torch.manual_seed(0)
    b, c, h, w, k = 2, 5, 9, 37, 5
    t = k * k
    views = {  # name: (base shape, filters [b, h, w, k, k] as a view of the base)
        'hw_transposed': ((b, w, h, k, k), lambda f: f.transpose(1, 2)),
        'window_sliced': ((b, h, w, k + 2, k + 2), lambda f: f[..., 1 : k + 1, 1 : k + 1]),
        'pixel_taps_sliced': ((b, h, w, t + 3), lambda f: f[..., :t].unflatten(-1, (k, k))),
        'tap_major_sliced': ((b, t + 2, h, w), lambda f: f[:, 1 : t + 1].unflatten(1, (k, k)).permute(0, 3, 4, 1, 2)),
        'batch_sliced': ((2 * b, h, w, k, k), lambda f: f[::2]),
    }
    x = torch.randn(b, c, h + k - 1, w + k - 1, dtype=torch.float64)
    go = torch.randn(b, c, h, w, dtype=torch.float64)
    for name, (shape, view) in views.items():
        base = torch.randn(shape, dtype=torch.float64)
        f = view(base)
        assert f.shape == (b, h, w, k, k), name
        ref = adaptive_conv_unfold(x, f)
        assert torch.equal(adaptive_conv(x, f), adaptive_conv(x, f.contiguous())), name
        torch.testing.assert_close(adaptive_conv(x, f), ref, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(adaptive_conv(x.float(), f.float()).double(), ref, rtol=1e-4, atol=1e-4)
        xa, ba = x.clone().requires_grad_(), base.clone().requires_grad_()
        xr, br = x.clone().requires_grad_(), base.clone().requires_grad_()
        ga = torch.autograd.grad(adaptive_conv(xa, view(ba)), (xa, ba), go)
        gr = torch.autograd.grad(adaptive_conv_unfold(xr, view(br)), (xr, br), go)
        for a, r in zip(ga, gr):
            torch.testing.assert_close(a, r, rtol=1e-12, atol=1e-12)
    for b, c, h, w, k in [(1, 3, 1, 20, 3), (2, 3, 4, 1, 3), (1, 2, 6, 17, 1), (1, 3, 5, 19, 3)]:
        x, f = make(b, c, h, w, k)
        t = k * k
        cases = [f, _tap_major_filters(f)]
        if b == 1:  # the batch stride never steps
            cases.append(f.as_strided(f.shape, (12345, w * t, t, k, 1)))
        kern = torch.randn(h, w, t, b, dtype=torch.float64).permute(3, 2, 0, 1)  # batch stride 1: neither layout
        for f2 in cases + [kern.unflatten(1, (k, k)).permute(0, 3, 4, 1, 2)]:
            ref = adaptive_conv_unfold(x, f2)
            torch.testing.assert_close(adaptive_conv(x, f2), ref, rtol=1e-12, atol=1e-12)
            assert torch.equal(adaptive_conv(x, f2), adaptive_conv(x, f2.contiguous()))


def test_correlation_blocks_overlap_and_accumulate(cpu_code_path):
    """The row-blocked correlation: overlapping last row / column blocks (H, W not multiples of the block), more
    than one 64-channel tile (the blocks add into the output), tap groups of every size (k = 1..9), maps lower
    than a row block or narrower than a vector; float64 against the unfold reference, every dtype."""
    torch.manual_seed(0)
    cases = [(1, 130, 9, 37, 5), (2, 70, 13, 21, 7), (1, 3, 1, 40, 3), (1, 65, 5, 8, 3), (1, 200, 7, 17, 9)]
    cases += [(1, 5, 2, 16, 1), (1, 129, 11, 48, 3), (1, 9, 6, 5, 3)]
    for b, c, h, w, k in cases:
        g = torch.randn(b, c, h, w, dtype=torch.float64)
        x = torch.randn(b, c, h + k - 1, w + k - 1, dtype=torch.float64)
        for dtype, tol in [
            (torch.float64, 1e-12),
            (torch.float32, 1e-5),
            (torch.bfloat16, 2e-2),
            (torch.half, 2e-3),
        ]:
            ref = local_correlation_unfold(g.to(dtype).double(), x.to(dtype).double())
            out = local_correlation(g.to(dtype), x.to(dtype)).double()
            torch.testing.assert_close(out, ref, rtol=tol, atol=tol * ref.abs().max().item())


def test_bfloat16_cpu_close_to_float32():
    x, f = make(1, 8, 9, 10, 3, dtype=torch.float32)
    out = adaptive_conv(x.bfloat16(), f.bfloat16())
    assert out.dtype == torch.bfloat16
    ref = adaptive_conv_unfold(x.bfloat16().float(), f.bfloat16().float())
    torch.testing.assert_close(out.float(), ref, rtol=2e-2, atol=5e-2)


@pytest.mark.parametrize(
    'make_args, exc, match',
    [
        (lambda: (torch.randn(2, 3, 8), torch.randn(2, 6, 6, 3, 3)), ValueError, 'input must be 4-D'),
        (lambda: (torch.randn(2, 3, 8, 8), torch.randn(2, 6, 6, 9)), ValueError, 'filters must be 5-D'),
        (lambda: (torch.randn(2, 3, 9, 9), torch.randn(2, 6, 6, 4, 4)), ValueError, 'must be odd'),
        (lambda: (torch.randn(2, 3, 8, 8), torch.randn(2, 6, 6, 3, 5)), ValueError, 'square'),
        (lambda: (torch.randn(2, 3, 9, 8), torch.randn(2, 6, 6, 3, 3)), ValueError, 'spatial size'),
        (lambda: (torch.randn(3, 3, 8, 8), torch.randn(2, 6, 6, 3, 3)), ValueError, 'batch size'),
        (lambda: (torch.randn(2, 0, 8, 8), torch.randn(2, 6, 6, 3, 3)), ValueError, 'empty'),
        (lambda: (torch.randn(0, 3, 8, 8), torch.randn(0, 6, 6, 3, 3)), ValueError, 'empty'),
        (lambda: (torch.randn(2, 3, 8, 8), torch.randn(2, 6, 6, 3, 3).double()), TypeError, 'same dtype'),
        (lambda: (torch.randint(0, 3, (2, 3, 8, 8)), torch.randn(2, 6, 6, 3, 3)), TypeError, 'floating point'),
        (lambda: (torch.randn(2, 3, 8, 8, device='meta'), torch.randn(2, 6, 6, 3, 3)), ValueError, 'same device'),
        (lambda: ([[1.0]], torch.randn(2, 6, 6, 3, 3)), TypeError, 'torch.Tensor'),
    ],
)
def test_adaptive_conv_bad_inputs(make_args, exc, match):
    with pytest.raises(exc, match=match):
        adaptive_conv(*make_args())


@pytest.mark.parametrize(
    'make_args, exc, match',
    [
        (lambda: (torch.randn(2, 3, 6, 6), torch.randn(2, 3, 8, 9)), ValueError, 'same odd window'),
        (lambda: (torch.randn(2, 3, 6, 6), torch.randn(2, 3, 9, 9)), ValueError, 'same odd window'),
        (lambda: (torch.randn(2, 3, 6, 6), torch.randn(2, 4, 8, 8)), ValueError, 'channel'),
        (lambda: (torch.randn(2, 3, 6), torch.randn(2, 3, 8, 8)), ValueError, '4-D'),
        (lambda: (torch.randn(2, 3, 6, 6), torch.randn(2, 3, 8, 8).half()), TypeError, 'same dtype'),
        (lambda: (torch.randn(2, 0, 6, 6), torch.randn(2, 0, 8, 8)), ValueError, 'empty'),
    ],
)
def test_local_correlation_bad_inputs(make_args, exc, match):
    with pytest.raises(exc, match=match):
        local_correlation(*make_args())


def test_compiled_entry_points_check_too():
    # The C++ layer validates on its own (defence in depth for direct callers of torch.ops.featup.*).
    ext = _backend.get_ext()
    if ext is None:
        pytest.skip('reference backend in use')
    with pytest.raises(RuntimeError, match='same dtype'):
        torch.ops.featup.adaptive_conv(torch.randn(1, 2, 5, 5), torch.randn(1, 9, 3, 3).double())
    with pytest.raises(RuntimeError, match='k\\*k taps'):
        torch.ops.featup.adaptive_conv(torch.randn(1, 2, 5, 5), torch.randn(1, 8, 3, 3))
    with pytest.raises(RuntimeError, match='same odd window'):
        torch.ops.featup.local_correlation(torch.randn(1, 2, 5, 5), torch.randn(1, 2, 8, 7))


def _run(code, **env):
    full = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get('PYTHONPATH', ''), **env)
    return subprocess.run([sys.executable, '-c', code], env=full, capture_output=True, text=True, timeout=900)


@pytest.mark.slow
def test_env_var_forces_reference():
    code = (
        'import torch, warnings\n'
        'import featup_plugin.ops as o\n'
        'warnings.simplefilter("error")  # the op itself must not warn when the reference is requested\n'
        'x = torch.randn(1, 2, 6, 6); f = torch.randn(1, 4, 4, 3, 3)\n'
        'torch.testing.assert_close(o.adaptive_conv(x, f), o.adaptive_conv_reference(x, f))\n'
        'print(o.backend_name())'
    )
    res = _run(code, FEATUP_OPS='reference')
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == 'reference (FEATUP_OPS=reference)'


@pytest.mark.slow
def test_invalid_env_var_is_an_error():
    res = _run(
        'import torch, featup_plugin.ops as o; o.adaptive_conv(torch.randn(1,1,3,3), torch.randn(1,1,1,3,3))',
        FEATUP_OPS='fast',
    )
    assert res.returncode != 0 and "FEATUP_OPS='fast' is not one of" in res.stderr


def test_fallback_warns_once_and_is_correct(monkeypatch):
    # Hide the prebuilt extension and make the JIT build fail: the reference must run, with ONE warning.
    import featup_plugin

    monkeypatch.setitem(sys.modules, 'featup_plugin._ext', None)
    monkeypatch.delattr(featup_plugin, '_ext', raising=False)
    monkeypatch.setattr(_backend, '_jit_build', lambda with_cuda: (_ for _ in ()).throw(OSError('no compiler')))
    monkeypatch.setenv('FEATUP_OPS', 'auto')
    _backend._reset_for_tests()
    try:
        x, f = make(1, 2, 4, 4, 3)
        with warnings.catch_warnings(record=True) as rec:
            warnings.simplefilter('always')
            out1 = adaptive_conv(x, f)
            out2 = adaptive_conv(x, f)
            g = torch.randn(1, 2, 4, 4, dtype=torch.float64)
            corr = local_correlation(g, x)
        msgs = [str(w.message) for w in rec if issubclass(w.category, RuntimeWarning)]
        assert len(msgs) == 1 and 'pure-PyTorch reference' in msgs[0] and 'no compiler' in msgs[0]
        assert ops.backend_name() == 'reference (fallback)'
        torch.testing.assert_close(out1, adaptive_conv_unfold(x, f))
        torch.testing.assert_close(out2, out1)
        torch.testing.assert_close(corr, local_correlation_unfold(g, x))
    finally:
        _backend._reset_for_tests()


def test_build_error_message_names_the_compiler_error():
    log = (
        "Error building extension 'x': [1/2] c++ -c a.cpp\nFAILED: a.o\n"
        "a.cpp:3:1: error: 'foo' was not declared in this scope\nninja: build stopped: subcommand failed."
    )
    assert _backend._first_error_line(log) == "a.cpp:3:1: error: 'foo' was not declared in this scope"
    assert _backend._first_error_line('') == 'unknown error'


@pytest.mark.slow
def test_jit_build_path(tmp_path):
    # FEATUP_OPS=jit compiles ops/csrc with ninja at first use (a fresh build directory, so it really builds); the
    # JIT module registers the same torch.ops.featup ops. Then the prebuilt module is asked for in the same process:
    # the guard keeps the JIT registration (one warning) instead of registering a second time.
    code = (
        'import os, torch, warnings, featup_plugin.ops as o\n'
        'from featup_plugin.ops import _backend\n'
        'x = torch.randn(2, 5, 9, 10, dtype=torch.float64); f = torch.randn(2, 5, 6, 5, 5, dtype=torch.float64)\n'
        'torch.testing.assert_close(o.adaptive_conv(x, f), o.adaptive_conv_reference(x, f))\n'
        'assert _backend._registered["module"].__name__.startswith("featup_plugin_jit_ext")\n'
        'kt = f.permute(0, 3, 4, 1, 2).reshape(2, 25, 5, 6)\n'
        'torch.testing.assert_close(torch.ops.featup.adaptive_conv(x, kt), o.adaptive_conv_reference(x, f))\n'
        'print(o.backend_name())\n'
        'os.environ["FEATUP_OPS"] = "ext"; _backend._reset_for_tests()\n'
        'with warnings.catch_warnings(record=True) as rec:\n'
        '    warnings.simplefilter("always")\n'
        '    print(o.backend_name())\n'
        'print(sum("already registered" in str(w.message) for w in rec))'
    )
    res = _run(code, FEATUP_OPS='jit', TORCH_EXTENSIONS_DIR=str(tmp_path), MAX_JOBS='2')
    assert res.returncode == 0, res.stderr[-3000:]
    lines = res.stdout.strip().splitlines()
    assert lines[-3].startswith('jit') and lines[-2] == lines[-3] and lines[-1] == '1', lines


def test_reference_backend_onnx_friendly_trace():
    # Under tracing the tap-loop reference runs (plain slicing/mul/add ops), so exports need no custom op.
    x, f = make(1, 2, 4, 4, 3, dtype=torch.float32)
    with warnings.catch_warnings():
        warnings.simplefilter('ignore', torch.jit.TracerWarning)
        traced = torch.jit.trace(adaptive_conv, (x, f))
    torch.testing.assert_close(traced(x, f), adaptive_conv_unfold(x, f))
    kinds = {node.kind() for node in traced.graph.nodes()}
    assert 'prim::PythonOp' not in kinds and 'aten::mul' in kinds


# ------------------------------------------------------------------------------------------------ CUDA
@pytest.mark.cuda
@pytest.mark.parametrize('k', [3, 5, 7])
def test_cuda_gradcheck_float64(k):
    x, f = make(2, 3, 5, 4, k, device='cuda', requires_grad=True)
    assert torch.autograd.gradcheck(adaptive_conv, (x, f), eps=1e-6, atol=1e-8)
    g = torch.randn(2, 3, 5, 4, dtype=torch.float64, device='cuda', requires_grad=True)
    assert torch.autograd.gradcheck(local_correlation, (g, x), eps=1e-6, atol=1e-8)


@pytest.mark.cuda
@pytest.mark.parametrize('dtype, tol', [(torch.float32, 1e-4), (torch.float16, 2e-2), (torch.bfloat16, 8e-2)])
def test_cuda_matches_cpu_reference(dtype, tol):
    rng = random.Random(7)
    for _ in range(12):
        b, c, h, w, k = (
            rng.randint(1, 3),
            rng.randint(1, 70),
            rng.randint(1, 40),
            rng.randint(1, 40),
            rng.choice([3, 5, 7]),
        )
        x, f = make(b, c, h, w, k, dtype=torch.float32)
        f = f.softmax(-1)
        ref = adaptive_conv_unfold(x.to(dtype).double(), f.to(dtype).double()).float()
        out = adaptive_conv(x.to(dtype).cuda(), f.to(dtype).cuda()).float().cpu()
        torch.testing.assert_close(out, ref, rtol=tol, atol=tol)
        g = torch.randn(b, c, h, w)
        refc = local_correlation_unfold(g.to(dtype).double(), x.to(dtype).double()).float()
        outc = local_correlation(g.to(dtype).cuda(), x.to(dtype).cuda()).float().cpu()
        torch.testing.assert_close(outc, refc, rtol=tol, atol=tol * c**0.5)


@pytest.mark.cuda
def test_cuda_backward_matches_reference_float32():
    x, f = make(2, 33, 29, 31, 7, dtype=torch.float32, device='cuda', requires_grad=True)
    go = torch.randn(2, 33, 29, 31, device='cuda')
    adaptive_conv(x, f).backward(go)
    gx, gf = x.grad, f.grad
    x2, f2 = x.detach().clone().requires_grad_(), f.detach().clone().requires_grad_()
    adaptive_conv_unfold(x2, f2).backward(go)
    torch.testing.assert_close(gx, x2.grad, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(gf, f2.grad, rtol=1e-4, atol=1e-3)


def test_jit_request_raises_on_failed_build(monkeypatch):
    # FEATUP_OPS=jit never falls back: a GPU check must not test the reference while believing it tests CUDA.
    monkeypatch.setattr(_backend, '_jit_build', lambda with_cuda: (_ for _ in ()).throw(OSError('no compiler')))
    monkeypatch.setenv('FEATUP_OPS', 'jit')
    _backend._reset_for_tests()
    try:
        with pytest.raises(RuntimeError, match=r'FEATUP_OPS=jit but the JIT build .* failed .*no compiler'):
            _backend.get_ext()
    finally:
        _backend._reset_for_tests()


def test_setup_and_jit_build_share_flags(monkeypatch):
    # setup.py and the JIT build compile the same code: both read ops/_build_flags.py.
    from featup_plugin.ops import _build_flags

    seen = {}

    def fake_load(**kwargs):
        seen.update(kwargs)
        return object()

    monkeypatch.setattr('torch.utils.cpp_extension.load', fake_load)
    _backend._jit_build(with_cuda=True)
    assert seen['extra_cflags'] == _build_flags.CXX_FLAGS + ['-DWITH_CUDA']
    assert seen['extra_cuda_cflags'] == _build_flags.NVCC_FLAGS + ['-DWITH_CUDA']
    assert '--use_fast_math' not in seen['extra_cuda_cflags']
    # setup.py's extension, built as `pip install` would (setuptools.setup captured, nothing compiles).
    import runpy

    import setuptools

    captured = {}
    monkeypatch.setattr(setuptools, 'setup', lambda **kw: captured.update(kw))
    monkeypatch.delenv('FEATUP_NO_EXT', raising=False)
    monkeypatch.setenv('FEATUP_NO_CUDA', '1')
    monkeypatch.chdir(ROOT)
    runpy.run_path(os.path.join(ROOT, 'setup.py'), run_name='__main__')
    (ext,) = captured['ext_modules']
    args = ext.extra_compile_args
    assert (args['cxx'] if isinstance(args, dict) else args) == _build_flags.CXX_FLAGS
    assert ext.extra_link_args == _build_flags.LD_FLAGS


# ------------------------------------------------------------------------------- the transposed op (backward)
def _transpose_by_flip(grad, kern, k):
    """The plain formulation of the op's input gradient: the forward on pad(grad) with the flipped taps."""
    p = k - 1
    return adaptive_conv_unfold(
        torch.nn.functional.pad(grad, [p, p, p, p]),
        flip_taps(kern, k).view(kern.shape[0], k, k, grad.shape[2] + p, grad.shape[3] + p).permute(0, 3, 4, 1, 2),
    )


def _transposed_op():
    if _backend.get_ext() is None or not hasattr(torch.ops.featup, 'adaptive_conv_transpose'):
        pytest.skip('no compiled module with featup::adaptive_conv_transpose (reference backend or an old build)')
    return torch.ops.featup.adaptive_conv_transpose


def test_transposed_op_equals_the_flipped_forward(cpu_code_path):
    op = _transposed_op()
    # narrow (W < k, W < one vector), exactly one vector of interior, odd sizes, channels not a multiple of CB
    shapes = [(1, 1, 1, 1, 3), (2, 3, 5, 6, 3), (1, 5, 4, 2, 7), (1, 7, 9, 23, 7), (2, 9, 13, 70, 5)]
    shapes += [(1, 3, 6, 40, 9), (1, 2, 3, 4, 1), (1, 6, 17, 33, 3)]
    shapes += [(1, 2, 5, 10, 15), (1, 5, 3, 20, 5)]  # border blocks only (no interior vector); interior < 1 vector
    for b, c, h, w, k in shapes:
        grad = torch.randn(b, c, h, w, dtype=torch.float64)
        kern = torch.randn(b, k * k, h, w, dtype=torch.float64)
        ref = _transpose_by_flip(grad, kern, k)
        torch.testing.assert_close(op(grad, kern), ref, rtol=1e-12, atol=1e-12)
        tol = 1e-5 * k * k
        torch.testing.assert_close(op(grad.float(), kern.float()).double(), ref, rtol=tol, atol=tol)
        bf = op(grad.bfloat16(), kern.bfloat16())
        assert bf.dtype == torch.bfloat16
        ref_bf = _transpose_by_flip(grad.bfloat16().double(), kern.bfloat16().double(), k)
        torch.testing.assert_close(bf.double(), ref_bf, rtol=2e-2, atol=2e-2 * k)
        half = op(grad.half(), kern.half())
        ref_half = _transpose_by_flip(grad.half().double(), kern.half().double(), k)
        torch.testing.assert_close(half.double(), ref_half, rtol=2e-3, atol=2e-3 * k)


def test_transposed_op_checks_and_non_contiguous_inputs():
    op = _transposed_op()
    grad = torch.randn(1, 4, 6, 7, dtype=torch.float64)
    kern = torch.randn(1, 9, 6, 7, dtype=torch.float64)
    ref = op(grad, kern)
    cl = grad.contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(op(cl, kern.transpose(2, 3).contiguous().transpose(2, 3)), ref, rtol=0, atol=0)
    with pytest.raises(RuntimeError, match='k\\*k taps'):
        op(grad, torch.randn(1, 8, 6, 7, dtype=torch.float64))
    with pytest.raises(RuntimeError, match='same spatial size'):
        op(grad, torch.randn(1, 9, 5, 7, dtype=torch.float64))
    with pytest.raises(RuntimeError, match='same dtype'):
        op(grad, kern.float())


def test_backward_uses_the_transposed_op_and_matches_the_reference():
    _transposed_op()
    import importlib

    ac_module = importlib.import_module('featup_plugin.ops.adaptive_conv')

    assert ac_module._HAS_TRANSPOSE_OP
    x, f = make(2, 5, 9, 11, 7, requires_grad=True)
    out = adaptive_conv(x, f)
    go = torch.randn_like(out)
    gx, gf = torch.autograd.grad(out, (x, f), go)
    x2, f2 = x.detach().requires_grad_(), f.detach().requires_grad_()
    rx, rf = torch.autograd.grad(adaptive_conv_unfold(x2, f2), (x2, f2), go)
    torch.testing.assert_close(gx, rx, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(gf, rf, rtol=1e-12, atol=1e-12)
    # local_correlation's gradient w.r.t. its padded input is the same transposed op
    g = torch.randn(2, 5, 9, 11, dtype=torch.float64, requires_grad=True)
    corr = local_correlation(g, x)
    gc = torch.randn_like(corr)
    (gp,) = torch.autograd.grad(corr, x, gc)
    (rp,) = torch.autograd.grad(local_correlation_unfold(g, x2), x2, gc)
    torch.testing.assert_close(gp, rp, rtol=1e-12, atol=1e-12)
    # and its own gradients (double backward of the op)
    kern = torch.randn(1, 9, 4, 5, dtype=torch.float64, requires_grad=True)
    grad = torch.randn(1, 2, 4, 5, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(torch.ops.featup.adaptive_conv_transpose, (grad, kern), eps=1e-6, atol=1e-8)


@pytest.mark.cuda
@pytest.mark.parametrize('dtype, tol', [(torch.float64, 1e-12), (torch.float32, 1e-4), (torch.bfloat16, 8e-2)])
def test_cuda_transposed_op_matches_cpu(dtype, tol):
    op = _transposed_op()
    for b, c, h, w, k in [(1, 1, 1, 1, 3), (2, 5, 9, 23, 7), (1, 3, 4, 2, 9), (2, 17, 31, 30, 5)]:
        grad = torch.randn(b, c, h, w, dtype=torch.float64)
        kern = torch.randn(b, k * k, h, w, dtype=torch.float64).softmax(1)
        ref = _transpose_by_flip(grad.to(dtype).double(), kern.to(dtype).double(), k)
        out = op(grad.to(dtype).cuda(), kern.to(dtype).cuda()).double().cpu()
        torch.testing.assert_close(out, ref, rtol=tol, atol=tol)
