"""PacJointUpsampler (the PAC paper's joint upsampling network): layout, sizes, guidance routing, the
residual start as bilinear upsampling, gradients and errors."""

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from featup_plugin.ops.pac import PacConv2d, PacConvTranspose2d
from featup_plugin.upsamplers import resize_guidance
from featup_plugin.upsamplers.pac_joint import PacJointUpsampler


def test_layout_follows_the_paper_defaults():
    up = PacJointUpsampler(1, num_stages=3)
    convs = lambda m: [c for c in m if isinstance(c, nn.Conv2d)]  # noqa: E731
    assert [c.kernel_size for c in convs(up.target)] == [(5, 5)] * 3
    assert [c.out_channels for c in convs(up.target)] == [32, 32, 32]
    assert [c.out_channels for c in convs(up.guidance)] == [32, 32, 16 * 3]  # one 16-channel slice per PAC layer
    assert [c.out_channels for c in convs(up.final)] == [32, 1]
    assert sum(isinstance(m, nn.ReLU) for m in up.target) == 2  # between convs, not after the last
    assert all(
        isinstance(s, PacConvTranspose2d) and s.kernel_size == (5, 5) and s.stride == (2, 2) and s.filler == 'linear'
        for s in up.stages
    )
    assert up.refine_conv is None
    up = PacJointUpsampler(4, 6, num_stages=2, refine=True, kernel_channels=8)
    assert isinstance(up.refine_conv, PacConv2d) and convs(up.guidance)[-1].out_channels == 8 * 3


@pytest.mark.parametrize(
    'kw, src, out_size, want',
    [
        (dict(num_stages=3), (4, 5), None, (32, 40)),
        (dict(num_stages=3), (4, 5), (30, 37), (30, 37)),  # a last resize lands on any size
        (dict(num_stages=2, refine=True), (6, 4), (24, 16), (24, 16)),
        (dict(num_stages=0, refine=True), (8, 8), (8, 8), (8, 8)),
    ],
)
def test_output_sizes(kw, src, out_size, want):
    up = PacJointUpsampler(3, 5, **kw)
    out = up(torch.randn(2, 3, *src), torch.randn(2, 3, 50, 60), out_size)
    assert out.shape == (2, 5, *want)


def test_only_the_stages_the_output_size_needs_run():
    up = PacJointUpsampler(3, num_stages=3)
    ran = []
    for i, stage in enumerate(up.stages):
        stage.register_forward_hook(lambda m, a, out, i=i: ran.append((i, tuple(out.shape[-2:]))))
    out = up(torch.randn(1, 3, 4, 4), torch.randn(1, 3, 16, 16), (13, 16))  # x4: two stages, then 16 -> 13 rows
    assert ran == [(0, (8, 8)), (1, (16, 16))] and out.shape == (1, 3, 13, 16)
    with pytest.raises(ValueError, match='needs 4 x2 stages, the module has 3'):
        up(torch.randn(1, 3, 4, 4), torch.randn(1, 3, 64, 64), (64, 64))


def test_each_pac_layer_gets_its_slice_of_the_adapting_features_at_its_resolution():
    torch.manual_seed(0)
    up = PacJointUpsampler(3, num_stages=3, refine=True, kernel_channels=4)
    seen, feats = [], {}
    up.guidance.register_forward_hook(lambda m, a, out: feats.setdefault('g', out))
    for layer in list(up.stages) + [up.refine_conv]:
        layer.register_forward_pre_hook(lambda m, args: seen.append(args[1]))
    up(torch.randn(1, 3, 4, 4), torch.randn(1, 3, 40, 40), (30, 30))
    g = feats['g']
    assert g.shape == (1, 16, 30, 30)  # the branch runs on the guidance resized to the output size
    sizes = [(8, 8), (16, 16), (32, 32), (30, 30)]
    assert len(seen) == 4
    for i, (s, size) in enumerate(zip(seen, sizes)):
        torch.testing.assert_close(s, resize_guidance(g[:, 4 * i : 4 * (i + 1)], size))


def test_residual_starts_as_bilinear_upsampling_then_learns():
    up = PacJointUpsampler(6, num_stages=2, residual=True)
    src, image = torch.randn(2, 6, 5, 7), torch.randn(2, 3, 20, 28)
    out = up(src, image, (20, 28))
    torch.testing.assert_close(out, F.interpolate(src, size=(20, 28), mode='bilinear', align_corners=False))
    out.square().sum().backward()
    assert up.final[-1].weight.grad.abs().sum() > 0  # the zero-initialised last conv gets a gradient
    with torch.no_grad():
        up.final[-1].weight.normal_()
    out = up(src, image, (20, 28))
    assert (out - up(src, torch.randn_like(image), (20, 28))).abs().max() > 1e-4  # the guidance now matters


def test_gradients_reach_every_parameter_the_source_and_the_guidance():
    up = PacJointUpsampler(3, 2, num_stages=2, refine=True)
    src = torch.randn(2, 3, 4, 4, requires_grad=True)
    image = torch.randn(2, 3, 16, 16, requires_grad=True)
    (up(src, image) * torch.randn(2, 2, 16, 16)).sum().backward()
    none = [n for n, p in up.named_parameters() if p.grad is None or p.grad.abs().sum() == 0]
    assert not none, none
    assert src.grad.abs().sum() > 0 and image.grad.abs().sum() > 0


def test_errors():
    with pytest.raises(ValueError, match='residual=True'):
        PacJointUpsampler(4, 5, residual=True)
    with pytest.raises(ValueError, match='kernel_size must be odd'):
        PacJointUpsampler(4, kernel_size=4)
    with pytest.raises(ValueError, match="up_filler='linear'"):
        PacJointUpsampler(4, up_kernel_size=3)
    with pytest.raises(ValueError, match='filler must be one of'):
        PacJointUpsampler(4, up_filler='bicubic')
    with pytest.raises(ValueError, match='num_stages=0 needs refine'):
        PacJointUpsampler(4, num_stages=0)
    with pytest.raises(ValueError, match='channels must be an int >= 1'):
        PacJointUpsampler(4, channels=0)
    up = PacJointUpsampler(4, num_stages=1)
    with pytest.raises(ValueError, match=r'source must be \[B, 4'):
        up(torch.randn(1, 3, 4, 4), torch.randn(1, 3, 8, 8))
    with pytest.raises(ValueError, match='guidance must be'):
        up(torch.randn(2, 4, 4, 4), torch.randn(1, 3, 8, 8))
