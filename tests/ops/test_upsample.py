"""The fused x2 bicubic + reflect pad (``torch.ops.featup.upsample2x_bicubic_pad``): equal to
``F.pad(F.interpolate(x, 2x, 'bicubic'), reflect)`` in float64 and float32, its backward op equal to PyTorch's,
opcheck, the fallbacks, and the JBU stage through it equal to the plain formulation."""

import os

import pytest
import torch
import torch.nn.functional as F

from featup_plugin.ops import _backend
from featup_plugin.ops.upsample import _fusable, upsample_bicubic_pad, upsample_bicubic_pad_plain
from featup_plugin.upsamplers import JBUStack
from tests.ops.test_adaptive_conv import cpu_code_path  # noqa: F401 - the fixture, shared

pytestmark = pytest.mark.skipif(
    os.environ.get('FEATUP_OPS', 'auto') == 'reference'
    or _backend.get_ext() is None
    or not _backend.has_fused_upsample(),
    reason='no compiled extension with the fused upsampling',
)

D = torch.float64


def _plain(x, p):
    return (
        F.pad(
            F.interpolate(x, (2 * x.shape[2], 2 * x.shape[3]), mode='bicubic', align_corners=False),
            [p] * 4,
            mode='reflect',
        )
        if p
        else F.interpolate(x, (2 * x.shape[2], 2 * x.shape[3]), mode='bicubic', align_corners=False)
    )


@pytest.mark.parametrize(
    'shape, p',
    [
        ((2, 3, 7, 9), 3),
        ((1, 2, 14, 14), 3),
        ((1, 1, 2, 3), 3),
        ((1, 4, 5, 1), 1),
        ((1, 2, 6, 5), 0),
        ((1, 1, 1, 1), 1),
        ((1, 3, 12, 11), 6),
    ],
)
def test_equals_the_plain_formulation_float64(shape, p):
    x = torch.randn(*shape, dtype=D)
    out = torch.ops.featup.upsample2x_bicubic_pad(x, p)
    torch.testing.assert_close(out, _plain(x, p), rtol=0, atol=1e-13)


def test_equals_the_plain_formulation_float32_and_noncontiguous():
    x = torch.randn(2, 8, 28, 30).transpose(2, 3)
    out = torch.ops.featup.upsample2x_bicubic_pad(x, 3)
    torch.testing.assert_close(out, _plain(x, 3), rtol=0, atol=2e-6)


def test_gradients_and_opcheck():
    x = torch.randn(1, 2, 4, 5, dtype=D, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: torch.ops.featup.upsample2x_bicubic_pad(t, 3), (x,))
    assert torch.autograd.gradgradcheck(lambda t: torch.ops.featup.upsample2x_bicubic_pad(t, 2), (x,))
    for p in (0, 3):
        res = torch.library.opcheck(torch.ops.featup.upsample2x_bicubic_pad.default, (x, p))
        assert all(v == 'SUCCESS' for v in res.values()), res
    g = torch.randn(1, 2, 14, 16, dtype=D)
    ours = torch.autograd.grad(torch.ops.featup.upsample2x_bicubic_pad(x, 3), x, g)[0]
    plain = torch.autograd.grad(_plain(x, 3), x, g)[0]
    torch.testing.assert_close(ours, plain, rtol=0, atol=1e-13)


@pytest.mark.parametrize('shape, p', [((2, 3, 7, 9), 3), ((1, 1, 2, 3), 3), ((1, 2, 6, 5), 0), ((1, 1, 1, 1), 1)])
def test_the_backward_op_equals_pytorchs_backward_float64(shape, p):
    x = torch.randn(*shape, dtype=D, requires_grad=True)
    out = _plain(x, p)
    g = torch.randn_like(out)
    want = torch.autograd.grad(out, x, g)[0]
    torch.testing.assert_close(torch.ops.featup.upsample2x_bicubic_pad_backward(g, p), want, rtol=0, atol=1e-12)
    res = torch.library.opcheck(torch.ops.featup.upsample2x_bicubic_pad_backward.default, (g.requires_grad_(), p))
    assert all(v == 'SUCCESS' for v in res.values()), res


@pytest.mark.usefixtures('cpu_code_path')
@pytest.mark.parametrize('shape, p', [((2, 3, 7, 9), 3), ((1, 2, 13, 40), 3), ((1, 1, 2, 3), 3), ((1, 1, 5, 4), 6)])
def test_every_cpu_code_path_forward_and_backward(shape, p):
    # the gather-form backward: the interior 8-tap filter, the clamped border columns, rows fed by reflected rows
    x = torch.randn(*shape, dtype=D, requires_grad=True)
    out = _plain(x, p)
    torch.testing.assert_close(torch.ops.featup.upsample2x_bicubic_pad(x.detach(), p), out, rtol=0, atol=1e-13)
    g = torch.randn_like(out)
    want = torch.autograd.grad(out, x, g)[0]
    torch.testing.assert_close(torch.ops.featup.upsample2x_bicubic_pad_backward(g, p), want, rtol=0, atol=1e-12)
    x32, g32 = x.detach().float(), g.float()
    got = torch.ops.featup.upsample2x_bicubic_pad_backward(g32, p)
    torch.testing.assert_close(got.double(), want, rtol=0, atol=1e-4)
    torch.testing.assert_close(torch.ops.featup.upsample2x_bicubic_pad(x32, p).double(), out, rtol=0, atol=1e-5)


def test_the_cpp_entry_point_checks_its_arguments():
    with pytest.raises(RuntimeError, match='reflect padding needs'):
        torch.ops.featup.upsample2x_bicubic_pad(torch.randn(1, 1, 2, 2), 4)
    with pytest.raises(RuntimeError, match='float32 or float64'):
        torch.ops.featup.upsample2x_bicubic_pad(torch.randn(1, 1, 2, 2).half(), 1)
    with pytest.raises(RuntimeError, match='4-D'):
        torch.ops.featup.upsample2x_bicubic_pad(torch.randn(1, 2, 2), 1)
    with pytest.raises(RuntimeError, match='is not a x2 map padded by'):
        torch.ops.featup.upsample2x_bicubic_pad_backward(torch.randn(1, 1, 7, 8), 1)


def test_the_fallbacks_and_the_dispatcher():
    x = torch.randn(1, 2, 4, 4)
    assert _fusable(x, (8, 8), 3)
    assert not _fusable(x, (8, 9), 3)  # not an exact x2
    assert not _fusable(x, (8, 8), 8)  # replicate padding (too small to reflect)
    assert not _fusable(x.half(), (8, 8), 3)
    for size, p in (((8, 9), 3), ((8, 8), 8), ((7, 7), 2), ((8, 8), 3)):
        torch.testing.assert_close(upsample_bicubic_pad(x, size, p), upsample_bicubic_pad_plain(x, size, p))
    meta = upsample_bicubic_pad(torch.empty(2, 3, 5, 6, device='meta'), (10, 12), 3)
    assert meta.shape == (2, 3, 16, 18) and meta.device.type == 'meta'


def test_the_jbu_stack_equals_the_plain_formulation(monkeypatch):
    torch.manual_seed(0)
    stack = JBUStack(8).double().eval()
    src, img = torch.randn(1, 8, 7, 7, dtype=D), torch.rand(1, 3, 112, 112, dtype=D)
    ours = stack(src, img)
    import featup_plugin.upsamplers.jbu as jbu

    monkeypatch.setattr(jbu, 'upsample_bicubic_pad', upsample_bicubic_pad_plain)
    torch.testing.assert_close(ours, stack(src, img), rtol=0, atol=1e-12)


def test_compile_static_and_dynamic_shapes():
    x = torch.randn(1, 2, 6, 5, dtype=D, requires_grad=True)

    def f(t):
        return upsample_bicubic_pad(t, (12, 10), 3)

    g = torch.randn(1, 2, 18, 16, dtype=D)
    want = torch.autograd.grad(_plain(x, 3), x, g)[0]
    for dynamic in (False, True):
        torch._dynamo.reset()
        out = torch.compile(f, backend='aot_eager', dynamic=dynamic, fullgraph=True)(x)
        torch.testing.assert_close(out, _plain(x, 3), rtol=0, atol=1e-13)
        torch.testing.assert_close(torch.autograd.grad(out, x, g)[0], want, rtol=0, atol=1e-13)
    torch._dynamo.reset()
