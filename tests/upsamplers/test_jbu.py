"""JBU stage / stack: FeatUp semantics, any output size, gradients to every parameter."""

import math

import pytest
import torch
import torch.nn.functional as F

from featup_plugin.upsamplers import ChannelNorm, JBULearnedRange, JBUStack, plan_stage_sizes


# -------------------------------------------------------------------------- independent re-derivation
def featup_stage_reference(stage, source, guidance):
    """FeatUp's JBULearnedRange.forward written from its formulas with F.unfold (eval mode: no dropout)."""
    r, d = stage.radius, stage.diameter
    b, _, gh, gw = guidance.shape
    q = stage.range_proj(guidance)
    qk = F.unfold(F.pad(q, [r] * 4, mode='reflect'), d).view(b, q.shape[1], d * d, gh, gw)
    logits = torch.einsum('bcphw,bchw->bphw', qk, q)
    temp = stage.range_temp.exp().clamp(1e-4, 1e4)
    rng = F.softmax(temp * logits, dim=1)
    lin = torch.linspace(-1, 1, d, dtype=guidance.dtype)
    yy, xx = torch.meshgrid(lin, lin, indexing='ij')
    spatial = torch.exp(-(xx**2 + yy**2) / (2 * stage.sigma_spatial**2)).reshape(1, d * d, 1, 1)
    kern = rng * spatial
    kern = kern / kern.sum(1, keepdim=True).clamp(1e-7)
    kern = kern + 0.1 * stage.fixup_proj(torch.cat([kern, guidance], 1))
    hr = F.interpolate(source, (gh, gw), mode='bicubic', align_corners=False)
    cols = F.unfold(F.pad(hr, [r] * 4, mode='reflect'), d).view(b, source.shape[1], d * d, gh, gw)
    return torch.einsum('bcphw,bphw->bchw', cols, kern)


def featup_stack_reference(stack, source, guidance):
    feats = source
    for stage in stack.stages:
        h, w = feats.shape[-2:]
        feats = featup_stage_reference(stage, feats, F.adaptive_avg_pool2d(guidance, (2 * h, 2 * w)))
    return feats + 0.1 * stack.fixup_proj(feats)


def randomise(module):
    with torch.no_grad():
        for p in module.parameters():
            p.add_(0.3 * torch.randn_like(p))
    return module


def test_stage_matches_featup_formulas():
    stage = randomise(JBULearnedRange(3, 6, 8, radius=3).double().eval())
    src, guid = torch.randn(2, 6, 5, 7, dtype=torch.float64), torch.rand(2, 3, 10, 14, dtype=torch.float64)
    torch.testing.assert_close(stage(src, guid), featup_stage_reference(stage, src, guid), rtol=1e-10, atol=1e-10)


def test_stack_default_is_featup_x16():
    stack = randomise(JBUStack(5).double().eval())
    src, img = torch.randn(1, 5, 6, 4, dtype=torch.float64), torch.rand(1, 3, 100, 70, dtype=torch.float64)
    out = stack(src, img)
    assert out.shape == (1, 5, 96, 64)
    torch.testing.assert_close(out, featup_stack_reference(stack, src, img), rtol=1e-9, atol=1e-9)


def test_featup_parameter_names_and_shapes():
    shapes = {k: tuple(v.shape) for k, v in JBUStack(384).state_dict().items()}
    assert shapes['up1.range_temp'] == () and shapes['up4.sigma_spatial'] == ()
    assert shapes['up2.range_proj.0.weight'] == (32, 3, 1, 1) and shapes['up2.range_proj.3.weight'] == (32, 32, 1, 1)
    assert shapes['up3.fixup_proj.0.weight'] == (49, 52, 1, 1) and shapes['up3.fixup_proj.3.weight'] == (49, 49, 1, 1)
    assert shapes['fixup_proj.1.weight'] == (384, 384, 1, 1) and shapes['fixup_proj.1.bias'] == (384,)
    assert len(shapes) == 4 * 10 + 2


@pytest.mark.parametrize(
    'in_hw, kwargs, out_hw',
    [
        ((7, 7), dict(scale_factor=2), (14, 14)),
        ((7, 9), dict(scale_factor=4), (28, 36)),
        ((16, 16), dict(scale_factor=14), (224, 224)),  # DINOv2 patch 14 -> image size
        ((14, 14), dict(scale_factor=16), (224, 224)),
        ((5, 8), dict(output_size=(37, 61)), (37, 61)),  # non-square, not a multiple
        ((6, 6), dict(output_size=(50, 90)), (50, 90)),  # aspect change
        ((4, 6), dict(output_size='guidance'), (64, 96)),
        ((4, 6), dict(output_size=20), (20, 20)),
        ((4, 6), dict(scale_factor=(2, 3)), (8, 18)),
        ((4, 6), {}, (64, 96)),
    ],
)
def test_stack_output_sizes(in_hw, kwargs, out_hw):
    stack = JBUStack(8)
    src, img = torch.randn(2, 8, *in_hw), torch.rand(2, 3, 64, 96)
    assert stack(src, img, **kwargs).shape == (2, 8, *out_hw)


def test_plan_stage_sizes():
    assert plan_stage_sizes((14, 14), (224, 224)) == [(28, 28), (56, 56), (112, 112), (224, 224)]
    assert plan_stage_sizes((16, 16), (224, 224)) == [(32, 32), (64, 64), (128, 128), (224, 224)]
    assert plan_stage_sizes((8, 12), (20, 30)) == [(16, 24), (20, 30)]
    assert plan_stage_sizes((8, 8), (8, 8)) == [(8, 8)]
    assert plan_stage_sizes((4, 4), (8, 40)) == [(8, 8), (8, 16), (8, 32), (8, 40)]
    with pytest.raises(ValueError, match='only upsamples'):
        plan_stage_sizes((8, 8), (4, 16))
    with pytest.raises(ValueError, match='num_stages=5'):
        plan_stage_sizes((2, 2), (64, 64), max_stages=4)


@pytest.mark.parametrize('train', [False, True])
def test_fused_fixup_equals_literal_fixup(train):
    stack = randomise(JBUStack(6).double()).train(train)
    src = torch.randn(2, 6, 3, 4, dtype=torch.float64, requires_grad=True)
    img = torch.rand(2, 3, 40, 50, dtype=torch.float64)
    outs, grads = [], []
    for fuse in (True, False):
        stack.fuse_fixup = fuse
        torch.manual_seed(3)  # same dropout masks: both orders draw the same random numbers
        out = stack(src, img, output_size=(37, 45))
        out.backward(torch.ones_like(out))
        outs.append(out.detach())
        grads.append([src.grad.clone()] + [p.grad.clone() for p in stack.parameters()])
        src.grad = None
        stack.zero_grad()
    torch.testing.assert_close(outs[0], outs[1], rtol=1e-10, atol=1e-10)
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=1e-8, atol=1e-10)


def test_fewer_stages_use_the_first_ones():
    stack = randomise(JBUStack(4).double().eval())
    src, img = torch.randn(1, 4, 5, 5, dtype=torch.float64), torch.rand(1, 3, 20, 20, dtype=torch.float64)
    out = stack(src, img, scale_factor=2)
    want = featup_stage_reference(stack.up1, src, F.adaptive_avg_pool2d(img, (10, 10)))
    torch.testing.assert_close(out, want + 0.1 * stack.fixup_proj(want))


def test_gradients_reach_every_parameter():
    stack = JBUStack(6)
    src = torch.randn(2, 6, 3, 5, requires_grad=True)
    img = torch.rand(2, 3, 40, 60)
    out = stack(src, img, output_size=(37, 53))
    (out * torch.randn_like(out)).sum().backward()
    assert src.grad is not None and src.grad.abs().sum() > 0
    for name, p in stack.named_parameters():
        assert p.grad is not None, name
        assert p.grad.abs().sum() > 0, name
        assert torch.isfinite(p.grad).all(), name


def test_tiny_feature_maps_use_replicate_padding():
    stack = JBUStack(3).eval()
    out = stack(torch.randn(1, 3, 1, 2), torch.rand(1, 3, 16, 32))
    assert out.shape == (1, 3, 16, 32) and torch.isfinite(out).all()


def test_guidance_larger_than_image_is_interpolated():
    stack = JBUStack(3).eval()
    out = stack(torch.randn(1, 3, 4, 4), torch.rand(1, 3, 16, 16), output_size=(64, 64))
    assert out.shape == (1, 3, 64, 64)


@pytest.mark.parametrize(
    'src_shape, img_shape, kwargs, match',
    [
        ((1, 5, 4, 4), (1, 3, 16, 16), {}, 'expects source'),
        ((1, 8, 4, 4), (1, 1, 16, 16), {}, 'guidance'),
        ((2, 8, 4, 4), (1, 3, 16, 16), {}, 'batch'),
        ((1, 8, 4, 4), (1, 3, 16, 16), dict(output_size=(2, 2)), 'only upsamples'),
        ((1, 8, 4, 4), (1, 3, 16, 16), dict(scale_factor=64), 'num_stages=6'),
        ((1, 8, 4, 4), (1, 3, 16, 16), dict(output_size='image'), "'guidance'"),
        ((1, 8, 4, 4), (1, 3, 16, 16), dict(output_size=8, scale_factor=2), 'not both'),
        ((1, 8, 4, 4), (1, 3, 16, 16), dict(scale_factor=-1), 'positive'),
    ],
)
def test_stack_bad_inputs(src_shape, img_shape, kwargs, match):
    with pytest.raises(ValueError, match=match):
        JBUStack(8)(torch.randn(*src_shape), torch.rand(*img_shape), **kwargs)


def test_stack_options():
    stack = JBUStack(4, num_stages=2, radius=2, key_dim=8, guidance_dim=4)
    assert stack.up1.diameter == 5 and stack.up2.range_proj[0].weight.shape == (8, 4, 1, 1)
    assert stack(torch.randn(1, 4, 3, 3), torch.rand(1, 4, 12, 12)).shape == (1, 4, 12, 12)
    with pytest.raises(ValueError, match='num_stages'):
        JBUStack(4, num_stages=0)


def test_channel_norm():
    norm = ChannelNorm(5)
    with torch.no_grad():
        norm.norm.weight.uniform_(0.5, 2)
        norm.norm.bias.uniform_(-1, 1)
    x = torch.randn(2, 5, 3, 4) * 3 + 1
    mean, var = x.mean(1, keepdim=True), x.var(1, unbiased=False, keepdim=True)
    want = (x - mean) / torch.sqrt(var + 1e-5) * norm.norm.weight.view(1, 5, 1, 1) + norm.norm.bias.view(1, 5, 1, 1)
    torch.testing.assert_close(norm(x), want)
    assert list(norm.state_dict()) == ['norm.weight', 'norm.bias']
    with pytest.raises(ValueError, match='ChannelNorm'):
        norm(torch.randn(2, 4, 3, 3))


def test_stack_float32_close_to_float64():
    stack = randomise(JBUStack(16)).eval()
    src, img = torch.randn(1, 16, 7, 7), torch.rand(1, 3, 112, 112)
    out32 = stack(src, img)
    out64 = stack.double()(src.double(), img.double())
    torch.testing.assert_close(out32.double(), out64, rtol=1e-4, atol=1e-4)
    assert math.isfinite(out32.abs().max().item())


@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs a CUDA GPU (none visible)')
def test_stack_cuda_matches_cpu_and_runs_under_autocast():
    stack = randomise(JBUStack(32)).eval()
    src, img = torch.randn(2, 32, 7, 9), torch.rand(2, 3, 112, 144)
    cpu = stack(src, img, output_size=(100, 130))
    gpu = stack.cuda()(src.cuda(), img.cuda(), output_size=(100, 130))
    torch.testing.assert_close(gpu.cpu(), cpu, rtol=1e-3, atol=1e-3)
    with torch.autocast('cuda', dtype=torch.float16):
        half = stack(src.cuda(), img.cuda(), output_size=(100, 130))
    assert torch.isfinite(half).all()
    torch.testing.assert_close(half.float().cpu(), cpu, rtol=5e-2, atol=5e-2)
