"""The ops registered with torch.library (torch.ops.featup.*): schemas, fake kernels and autograd checked by
torch.library.opcheck; torch.compile(fullgraph=True) and torch.export of the JBU stack and PAC layers equal eager
(values and gradients); meta-device forwards; double backward; the registration guard."""

import os
import subprocess
import sys
import types
import warnings

import pytest
import torch

from featup_plugin.ops import _backend, _library, adaptive_conv, local_correlation
from featup_plugin.ops.adaptive_conv import _flip_taps_sliced, _flip_taps_strided
from featup_plugin.ops.pac import PacConv2d, PacPool2d, pac_conv2d, pac_kernel2d
from featup_plugin.ops.reference import adaptive_conv_unfold
from featup_plugin.upsamplers import JBUStack
from tests import ROOT

D = torch.float64

pytestmark = pytest.mark.skipif(
    os.environ.get('FEATUP_OPS', 'auto') == 'reference' or _backend.get_ext() is None,
    reason='no compiled extension: the ops are not registered',
)


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    # Compiled code is cached per code object and the backend choice is a graph constant: start each test clean.
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def _op(name):
    return getattr(torch.ops.featup, name).default


def test_the_four_ops_are_registered_with_cpu_kernels_and_pt2_tags():
    for name in _library.OPS:
        op = _op(name)
        assert torch._C._dispatch_has_kernel_for_dispatch_key(op.name(), 'CPU'), name
        assert torch._C._dispatch_has_kernel_for_dispatch_key(op.name(), 'Meta'), name  # register_fake
        assert torch.Tag.pt2_compliant_tag in op.tags, name
    assert str(_op('adaptive_conv')._schema) == 'featup::adaptive_conv(Tensor input, Tensor kernel) -> Tensor'
    has_cuda = _backend.get_ext().with_cuda()
    assert torch._C._dispatch_has_kernel_for_dispatch_key('featup::adaptive_conv', 'CUDA') == has_cuda


# ------------------------------------------------------------------------------------------------ opcheck
def _acc_args(requires_grad):
    x = torch.randn(2, 3, 7, 8, dtype=D, requires_grad=requires_grad)
    kern = torch.randn(2, 9, 5, 6, dtype=D, requires_grad=requires_grad)
    return x, kern


def _pixel_major_kernel(requires_grad):
    kern = torch.randn(2, 5, 6, 9, dtype=D).permute(0, 3, 1, 2).detach().requires_grad_(requires_grad)
    assert kern.shape == (2, 9, 5, 6) and kern.stride() == (270, 1, 54, 9)
    return kern


def _pac_args(requires_grad, with_weight=True, with_bias=True):
    x = torch.randn(2, 3, 7, 6, dtype=D, requires_grad=requires_grad)
    geom = [3, 5, 2, 1, 1, 2, 1, 1]
    kern = pac_kernel2d(torch.randn(2, 2, 7, 6, dtype=D), (3, 5), (2, 1), (1, 2), (1, 1))
    kern = kern.detach().requires_grad_(requires_grad)
    w = torch.randn(4, 3, 3, 5, dtype=D, requires_grad=requires_grad) if with_weight else None
    b = torch.randn(4, dtype=D, requires_grad=requires_grad) if with_bias and with_weight else None
    return x, kern, w, b, geom, 1 << 20


OPCHECK_CASES = {
    'adaptive_conv': lambda g: _acc_args(g),
    'adaptive_conv_k1_float32': lambda g: (torch.randn(1, 4, 3, 5, requires_grad=g), torch.randn(1, 1, 3, 5)),
    'local_correlation': lambda g: (torch.randn(2, 3, 5, 6, dtype=D, requires_grad=g), _acc_args(g)[0]),
    'adaptive_conv_transpose': lambda g: (
        torch.randn(2, 3, 5, 6, dtype=D, requires_grad=g),
        torch.randn(2, 9, 5, 6, dtype=D, requires_grad=g),
    ),
    # FeatUp's filters [B, H, W, k, k] viewed tap-major: the CPU kernels read this pixel-major layout in place
    'adaptive_conv_pixel_major': lambda g: (_acc_args(g)[0], _pixel_major_kernel(g)),
    'adaptive_conv_transpose_pixel_major': lambda g: (
        torch.randn(2, 3, 5, 6, dtype=D, requires_grad=g),
        _pixel_major_kernel(g),
    ),
    'pac_forward_conv': lambda g: _pac_args(g),
    'pac_forward_conv_no_bias': lambda g: _pac_args(g, with_bias=False),
    'pac_forward_pool': lambda g: _pac_args(g, with_weight=False),
}


@pytest.mark.parametrize(
    'case, requires_grad',
    [(c, True) for c in sorted(OPCHECK_CASES)] + [('adaptive_conv', False), ('pac_forward_conv', False)],
)
def test_opcheck(case, requires_grad):
    name = 'pac_forward' if case.startswith('pac_forward') else case.split('_k1')[0].split('_pixel_major')[0]
    args = OPCHECK_CASES[case](requires_grad)
    results = torch.library.opcheck(_op(name), args)
    assert results and all(v == 'SUCCESS' for v in results.values()), results


@pytest.mark.parametrize(
    'need, with_weight',
    [((True, True, True), True), ((True, False, False), True), ((False, True, False), True)]
    + [((False, False, True), True), ((True, True, False), False), ((False, False, True), False)],
)
def test_opcheck_pac_backward(need, with_weight):
    x, kern, w, _, geom, tile = _pac_args(False, with_weight=with_weight)
    out = _op('pac_forward')(x, kern, w, None, geom, tile)
    args = (torch.randn_like(out), x, kern, w, geom, *need, tile)
    results = torch.library.opcheck(_op('pac_backward'), args)
    assert all(v == 'SUCCESS' for v in results.values()), results
    gi, gk, gw = _op('pac_backward')(*args)
    assert gi.shape == (x.shape if need[0] else (0,))
    assert gk.shape == (kern.shape if need[1] else (0,))
    assert gw.shape == (w.shape if need[2] and with_weight else (0,))


def test_the_cpp_entry_points_refuse_other_devices():
    # Redispatch the CPU kernel with meta tensors: the entry point's own device check must refuse them.
    cpu = torch._C.DispatchKeySet(torch._C.DispatchKey.CPU)
    x, kern = torch.empty(1, 2, 5, 5, device='meta'), torch.empty(1, 9, 3, 3, device='meta')
    with pytest.raises(RuntimeError, match='CPU or CUDA tensors, got a tensor on meta'):
        _op('adaptive_conv').redispatch(cpu, x, kern)
    with pytest.raises(RuntimeError, match='CPU or CUDA tensors, got a tensor on meta'):
        _op('pac_forward').redispatch(cpu, x, kern, None, None, [3, 3, 1, 1, 0, 0, 1, 1], 1 << 20)


def test_the_pac_ops_check_their_arguments_in_cpp_too():
    # (the adaptive-conv entry points: tests/ops/test_adaptive_conv.py::test_compiled_entry_points_check_too)
    with pytest.raises(RuntimeError, match='geom'):
        torch.ops.featup.pac_forward(torch.randn(1, 2, 5, 5), torch.randn(1, 9, 3, 3), None, None, [3, 3], 1)


# ------------------------------------------------------------------------------------------------ autograd
def test_double_backward_of_local_correlation():
    # (adaptive_conv: tests/ops/test_adaptive_conv.py::test_gradgradcheck_float64)
    x = torch.randn(1, 2, 4, 5, dtype=D, requires_grad=True)
    g = torch.randn(1, 2, 2, 3, dtype=D, requires_grad=True)
    assert torch.autograd.gradgradcheck(local_correlation, (g, x), eps=1e-6, atol=1e-7)


def test_pac_double_backward_is_a_clear_error():
    x, kern, w, b, geom, tile = _pac_args(True)
    out = pac_conv2d(x, kern, w, b, (2, 1), (1, 2), (1, 1))
    (gx,) = torch.autograd.grad(out.square().sum(), x, create_graph=True)
    with pytest.raises(RuntimeError, match='first-order gradients only'):
        gx.sum().backward()


# ------------------------------------------------------------------------------------------------ compile
@pytest.mark.parametrize('k', [1, 3, 7])
def test_the_traced_flip_taps_equals_the_eager_one(k):
    # Under torch.compile the transposed op's re-indexing is plain slicing instead of an as_strided view.
    kernel = torch.randn(2, k * k, 4, 5, dtype=D)
    torch.testing.assert_close(_flip_taps_sliced(kernel, k), _flip_taps_strided(kernel, k), rtol=0, atol=0)
    assert _flip_taps_sliced(kernel, k).shape == (2, k * k, 4 + k - 1, 5 + k - 1)


def _stack(train, dropout=0.0):
    torch.manual_seed(0)
    stack = JBUStack(8, num_stages=2, dropout=dropout, final_dropout=dropout)
    with torch.no_grad():
        for p in stack.parameters():  # non-trivial values everywhere (the final conv, the temperature)
            p.add_(0.05 * torch.randn_like(p))
    return stack.train(train)


def _params_grads(module):
    return {n: p.grad.clone() for n, p in module.named_parameters() if p.grad is not None}


def _compare_compiled(module, inputs, backend, grads=True, **compile_kw):
    compiled = torch.compile(module, fullgraph=True, backend=backend, **compile_kw)
    leaves = [t.detach().clone().requires_grad_(grads) for t in inputs]
    leaves_c = [t.detach().clone().requires_grad_(grads) for t in inputs]
    want = module(*leaves)
    got = compiled(*leaves_c)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
    if not grads:
        return got
    go = torch.randn_like(want)
    module.zero_grad()
    want.backward(go)
    g_eager = _params_grads(module)
    module.zero_grad()
    got.backward(go)
    g_comp = _params_grads(module)
    assert g_eager.keys() == g_comp.keys() == {n for n, p in module.named_parameters() if p.requires_grad}
    for n in g_eager:
        torch.testing.assert_close(g_comp[n], g_eager[n], rtol=1e-4, atol=1e-5, msg=n)
    for a, b in zip(leaves_c, leaves):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-4, atol=1e-5)
    return got


def _jbu_inputs():
    return torch.randn(2, 8, 4, 5), torch.randn(2, 3, 16, 20)


@pytest.mark.parametrize('train', [False, True])
def test_compile_fullgraph_jbu_stack_aot_eager(train):
    # aot_eager: dynamo capture + AOT autograd over fake tensors (the registration), without inductor's codegen.
    out = _compare_compiled(_stack(train), _jbu_inputs(), 'aot_eager')
    assert out.shape == (2, 8, 16, 20)


def test_compile_graph_holds_the_registered_ops():
    graphs = []

    def backend(gm, example_inputs):
        graphs.append(gm)
        return gm

    torch.compile(_stack(False), fullgraph=True, backend=backend)(*_jbu_inputs())
    code = graphs[0].code
    assert code.count('torch.ops.featup.adaptive_conv') == 2 and code.count('torch.ops.featup.local_correlation') == 2


# Inductor tests compile without torch's on-disk caches: the AOTAutograd cache keys a graph on its forward graph
# only, so an artifact compiled with an older version of the backward formulas (featup_plugin/ops/_library.py,
# flip_taps) would be reused (docs/ops.md#registration-with-torchlibrary).
@pytest.mark.slow
@pytest.mark.parametrize('train', [False, True])
def test_compile_fullgraph_jbu_stack_inductor(train):
    with torch._inductor.config.patch(fx_graph_cache=False):
        _compare_compiled(_stack(train), _jbu_inputs(), 'inductor')


def test_compile_with_dropout_in_train_mode_matches_eager_masks():
    # With fallback_random the compiled graph draws the dropout masks with eager's generator, in eager's order.
    stack = _stack(True, dropout=0.3)
    src, img = _jbu_inputs()
    with torch._inductor.config.patch(fallback_random=True):
        compiled = torch.compile(stack, fullgraph=True, backend='aot_eager')
        torch.manual_seed(5)
        want = stack(src, img)
        torch.manual_seed(5)
        got = compiled(src, img)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
    torch.manual_seed(6)
    assert not torch.allclose(compiled(src, img), got)  # dropout is really on


@pytest.mark.parametrize('train', [False, True])
@pytest.mark.parametrize('layer', ['conv', 'conv_shared', 'pool'])
def test_compile_fullgraph_pac_layers(layer, train):
    torch.manual_seed(0)
    if layer == 'pool':
        mod = PacPool2d(3, padding=1, normalize_kernel=True)
    else:
        mod = PacConv2d(4, 4 if layer == 'conv_shared' else 5, 3, stride=2, padding=1, shared_filters=layer != 'conv')
    out = _compare_compiled(mod.train(train), (torch.randn(2, 4, 9, 8), torch.randn(2, 3, 9, 8)), 'aot_eager')
    assert out.shape == ((2, 4, 9, 8) if layer == 'pool' else (2, mod.out_channels, 5, 4))


@pytest.mark.slow
def test_compile_fullgraph_pac_conv_inductor():
    mod = PacConv2d(4, 5, 3, padding=1, kernel_type='inv_0.5_-1')
    with torch._inductor.config.patch(fx_graph_cache=False):
        _compare_compiled(mod.train(), (torch.randn(2, 4, 9, 8), torch.randn(2, 3, 9, 8)), 'inductor')


def test_compile_pac_respects_the_tile_budget_at_trace_time(monkeypatch):
    # The tile budget is a graph constant; a budget of one column still gives the exact result when compiled.
    monkeypatch.setenv('FEATUP_PAC_TILE_MB', '0.00002')
    mod = PacConv2d(3, 4, 3, padding=1).double()
    _compare_compiled(mod, (torch.randn(1, 3, 6, 7, dtype=D), torch.randn(1, 2, 6, 7, dtype=D)), 'aot_eager')


# ------------------------------------------------------------------------------------------------ export
def test_export_jbu_stack_runs_and_equals_eager(tmp_path):
    stack = _stack(False)
    src, img = _jbu_inputs()
    ep = torch.export.export(stack, (src, img))
    targets = {str(n.target) for n in ep.graph.nodes if n.op == 'call_function'}
    assert 'featup.adaptive_conv.default' in targets and 'featup.local_correlation.default' in targets
    src2, img2 = torch.randn_like(src), torch.randn_like(img)
    torch.testing.assert_close(ep.module()(src2, img2), stack(src2, img2), rtol=1e-5, atol=1e-6)
    path = tmp_path / 'jbu.pt2'
    torch.export.save(ep, str(path))
    loaded = torch.export.load(str(path))
    torch.testing.assert_close(loaded.module()(src2, img2), stack(src2, img2), rtol=1e-5, atol=1e-6)


def _run(code, **env):
    full = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get('PYTHONPATH', ''), **env)
    return subprocess.run([sys.executable, '-c', code], env=full, capture_output=True, text=True, timeout=600)


def test_an_exported_program_loads_in_a_fresh_process_after_register_ops(tmp_path):
    stack = _stack(False)
    src, img = _jbu_inputs()
    path = tmp_path / 'jbu.pt2'
    torch.export.save(torch.export.export(stack, (src, img)), str(path))
    torch.save(dict(src=src, img=img, want=stack(src, img)), str(tmp_path / 'io.pt'))
    code = (
        'import sys, torch, featup_plugin.ops as o\n'
        'assert not hasattr(torch.ops.featup, "adaptive_conv")  # nothing registered at import\n'
        'assert o.register_ops()\n'
        f'ep = torch.export.load({str(path)!r}); io = torch.load({str(tmp_path / "io.pt")!r})\n'
        'torch.testing.assert_close(ep.module()(io["src"], io["img"]), io["want"], rtol=1e-5, atol=1e-6)\n'
        'print("ok")'
    )
    res = _run(code)
    assert res.returncode == 0 and res.stdout.strip() == 'ok', res.stderr[-2000:]


@pytest.mark.slow
def test_the_reference_fallback_compiles_fullgraph_too():
    # Without a compiled module nothing is registered: the tap loops are traced as plain PyTorch ops.
    code = (
        'import torch, warnings\n'
        'warnings.simplefilter("error", RuntimeWarning)\n'
        'from featup_plugin.upsamplers import JBUStack\n'
        'from featup_plugin.ops import backend_name\n'
        'stack = JBUStack(4, num_stages=1).eval(); x, g = torch.randn(1, 4, 3, 4), torch.randn(1, 3, 6, 8)\n'
        'got = torch.compile(stack, fullgraph=True, backend="aot_eager")(x, g)\n'
        'torch.testing.assert_close(got, stack(x, g))\n'
        'assert not hasattr(torch.ops.featup, "adaptive_conv")\n'
        'print(backend_name())'
    )
    res = _run(code, FEATUP_OPS='reference')
    assert res.returncode == 0, res.stderr[-2000:]
    assert res.stdout.strip() == 'reference (FEATUP_OPS=reference)'


def test_export_jbu_stack_with_a_dynamic_batch():
    stack = _stack(False)
    src, img = _jbu_inputs()
    batch = torch.export.Dim('batch', min=1, max=16)
    ep = torch.export.export(stack, (src, img), dynamic_shapes=({0: batch}, {0: batch}))
    src3, img3 = torch.randn(3, 8, 4, 5), torch.randn(3, 3, 16, 20)
    torch.testing.assert_close(ep.module()(src3, img3), stack(src3, img3), rtol=1e-5, atol=1e-6)


def test_export_pac_conv_runs_and_equals_eager():
    mod = PacConv2d(4, 5, 3, padding=1).eval()
    x, g = torch.randn(2, 4, 9, 8), torch.randn(2, 3, 9, 8)
    ep = torch.export.export(mod, (x, g))
    assert any(str(n.target) == 'featup.pac_forward.default' for n in ep.graph.nodes)
    torch.testing.assert_close(ep.module()(x, g), mod(x, g), rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------------------------------------------ meta
def test_meta_device_forward_gives_the_shapes():
    stack = JBUStack(16, num_stages=3).to('meta')
    out = stack(torch.randn(2, 16, 5, 7, device='meta'), torch.randn(2, 3, 40, 56, device='meta'))
    assert out.device.type == 'meta' and out.shape == (2, 16, 40, 56)
    out = stack(torch.randn(1, 16, 5, 7, device='meta'), torch.randn(1, 3, 70, 90, device='meta'), output_size=(33, 50))
    assert out.shape == (1, 16, 33, 50)
    pac = PacConv2d(4, 6, 3, stride=2, padding=1).to('meta')
    assert pac(torch.randn(2, 4, 9, 8, device='meta'), torch.randn(2, 3, 9, 8, device='meta')).shape == (2, 6, 5, 4)
    x, f = torch.randn(1, 2, 6, 7, device='meta'), torch.randn(1, 4, 5, 3, 3, device='meta')
    assert adaptive_conv(x, f).shape == (1, 2, 4, 5)
    assert local_correlation(torch.randn(1, 2, 4, 5, device='meta'), x).shape == (1, 9, 4, 5)


def test_meta_device_backward_gives_the_shapes():
    stack = JBUStack(8, num_stages=2).to('meta')
    src = torch.randn(1, 8, 4, 4, device='meta', requires_grad=True)
    stack(src, torch.randn(1, 3, 16, 16, device='meta')).sum().backward()
    assert src.grad.shape == src.shape and stack.up1.range_temp.grad.shape == ()


def test_the_python_checks_still_run_first():
    # The public API keeps its messages: checks run in Python before the op (here: meta + CPU, same device check).
    with pytest.raises(ValueError, match='same device'):
        adaptive_conv(torch.randn(1, 2, 5, 5, device='meta'), torch.randn(1, 3, 3, 3, 3))
    with pytest.raises(ValueError, match='spatial size'):
        adaptive_conv(torch.randn(1, 2, 6, 5, device='meta'), torch.randn(1, 3, 3, 3, 3, device='meta'))


def test_op_results_equal_the_reference_through_the_public_api():
    x, f = torch.randn(2, 3, 8, 9, dtype=D), torch.randn(2, 4, 5, 5, 5, dtype=D)
    torch.testing.assert_close(adaptive_conv(x, f), adaptive_conv_unfold(x, f), rtol=1e-12, atol=1e-12)


# ------------------------------------------------------------------------------------------------ guard
def test_a_second_module_never_registers_over_the_first():
    owner = _backend._registered['module']

    def refuse():
        raise AssertionError('register_ops must not be called on a second module')

    other = types.SimpleNamespace(__name__='other_ext', register_ops=refuse, with_cuda=lambda: False)
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter('always')
        mod, desc = _backend._activate(other, 'jit (cpu)')
    assert mod is owner and desc == _backend._registered['desc']
    assert any('already registered by' in str(w.message) for w in rec)
    with warnings.catch_warnings():
        warnings.simplefilter('error')
        assert _backend._activate(owner, 'x')[0] is owner  # the owner itself: silent


def test_a_stale_module_without_register_ops_is_refused(monkeypatch):
    monkeypatch.setattr(_backend, '_registered', {})
    stale = types.SimpleNamespace(__name__='featup_plugin._ext')
    with pytest.raises(ImportError, match='older sources'):
        _backend._activate(stale, 'ext (cpu)')
