"""SFT layers: the framework-free core (featup_plugin.layers)."""

import pytest
import torch
import torch.nn as nn

from featup_plugin.layers import ResBlockSFT, SFTConditionNet, SFTLayer, resize_condition, sobel_magnitude


def _randomise_sft(module: nn.Module, std=0.5):
    """Move every SFT layer away from its identity start."""
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, SFTLayer):
                for branch in (m.scale, m.shift):
                    branch[-1].weight.normal_(0, std)
                    branch[-1].bias.normal_(0, std)


# -- core ---------------------------------------------------------------------------------------------------
def test_sft_layer_is_identity_at_init_then_the_affine_transform():
    layer = SFTLayer(6, 4, hidden_channels=5)
    x, c = torch.randn(2, 6, 5, 7), torch.randn(2, 4, 5, 7)
    assert torch.equal(layer(x, c), x)
    _randomise_sft(layer)
    gamma, beta = layer.modulation(c)
    assert gamma.shape == beta.shape == x.shape and gamma.abs().amin() > 0
    torch.testing.assert_close(layer(x, c), x * (1 + gamma) + beta)
    # per pixel: gamma at a pixel depends on the condition at that pixel only (1x1 convolutions)
    c2 = c.clone()
    c2[:, :, 2, 3] += 1
    diff = (layer(x, c2) - layer(x, c)).abs().sum(1)
    assert diff[:, 2, 3].min() > 0 and diff.sum() == diff[:, 2, 3].sum()
    layer.reset_output()
    assert torch.equal(layer(x, c), x)


def test_resblock_sft():
    block = ResBlockSFT(6, 4, norm_layer=nn.BatchNorm2d, zero_init_last=True).eval()
    x, c = torch.randn(2, 6, 9, 5), torch.randn(2, 4, 9, 5)
    assert torch.equal(block(x, c), x)  # the whole block starts as the identity
    block = ResBlockSFT(6, 4)
    assert block(x, c).shape == x.shape and not torch.allclose(block(x, c), x)
    # SFT layers at the identity: the block is a plain residual conv block, whatever the condition
    assert torch.equal(block(x, c), block(x, torch.randn_like(c)))
    _randomise_sft(block)
    assert not torch.allclose(block(x, c), block(x, torch.randn_like(c)))


@pytest.mark.parametrize('signal, in_ch', [('raw', 3), ('edges', 3), ('raw+edges', 3), ('raw', 7)])
def test_condition_net_one_condition_per_scale(signal, in_ch):
    net = SFTConditionNet(in_ch, cond_channels=5, hidden_channels=6, num_scales=4, signal=signal)
    g = torch.randn(2, in_ch, 37, 50)
    sizes = [(3, 4), (5, 7), (19, 25), (74, 100)]  # shrinking, non-square, and one larger than the guidance
    conds = net(g, sizes)
    assert [tuple(c.shape) for c in conds] == [(2, 5) + s for s in sizes]
    assert net.trunk[0].in_channels == in_ch * (2 if signal == 'raw+edges' else 1)
    # each scale sees the guidance at its size
    torch.testing.assert_close(
        net.signal_at(g, (5, 7))[:, :in_ch] if signal != 'edges' else net.signal_at(g, (5, 7)),
        torch.nn.functional.adaptive_avg_pool2d(g, (5, 7))
        if signal != 'edges'
        else sobel_magnitude(torch.nn.functional.adaptive_avg_pool2d(g, (5, 7))),
    )


def test_resize_condition_and_sobel():
    x = torch.randn(1, 2, 8, 12)
    torch.testing.assert_close(resize_condition(x, (4, 6)), torch.nn.functional.avg_pool2d(x, 2))
    assert resize_condition(x, (8, 12)) is x
    assert resize_condition(x, (16, 10)).shape == (1, 2, 16, 10)
    step = torch.zeros(1, 1, 6, 8)
    step[..., 4:] = 1.0
    mag = sobel_magnitude(step, eps=0.0)
    # a vertical step between columns 3 and 4: (1 + 2 + 1) / 8 = 0.5 on both sides, 0 elsewhere
    torch.testing.assert_close(mag[0, 0, :, 3:5], torch.full((6, 2), 0.5))
    assert mag[0, 0, :, :3].abs().max() == 0 and mag[0, 0, :, 5:].abs().max() == 0
    assert sobel_magnitude(torch.randn(2, 3, 5, 9)).shape == (2, 3, 5, 9)


def test_core_bad_inputs():
    with pytest.raises(ValueError, match='feat_channels'):
        SFTLayer(0, 4)
    with pytest.raises(ValueError, match='signal'):
        SFTConditionNet(3, signal='sobel')
    layer = SFTLayer(6, 4)
    with pytest.raises(ValueError, match='spatial size'):
        layer(torch.randn(1, 6, 5, 5), torch.randn(1, 4, 5, 6))
    with pytest.raises(ValueError, match=r'the condition must be \[B, 4, H, W\]'):
        layer(torch.randn(1, 6, 5, 5), torch.randn(1, 3, 5, 5))
    with pytest.raises(TypeError, match='torch.Tensor'):
        layer(torch.randn(1, 6, 5, 5), None)
    net = SFTConditionNet(3, num_scales=2)
    with pytest.raises(ValueError, match='2 scale'):
        net(torch.randn(1, 3, 8, 8), [(4, 4)])
    with pytest.raises(ValueError, match='guidance'):
        net(torch.randn(1, 4, 8, 8), [(4, 4), (8, 8)])


def test_gradients_reach_the_condition_network():
    torch.manual_seed(0)
    net = SFTConditionNet(3, cond_channels=4, num_scales=2)
    blocks = nn.ModuleList([ResBlockSFT(6, 4), ResBlockSFT(6, 4)])
    opt = torch.optim.SGD(list(net.parameters()) + list(blocks.parameters()), lr=0.1)
    x, g = torch.randn(2, 6, 4, 6), torch.randn(2, 3, 16, 24)

    def step():
        opt.zero_grad()
        conds = net(g, [(4, 6), (8, 12)])
        y = blocks[1](nn.functional.interpolate(blocks[0](x, conds[0]), size=(8, 12)), conds[1])
        (y**2).mean().backward()

    step()
    # zero-initialised SFT outputs: their own weights get gradient, the condition does not yet
    assert all(p.grad is None or not p.grad.any() for p in net.parameters())
    assert all(m.scale[-1].weight.grad.abs().sum() > 0 for m in blocks.modules() if isinstance(m, SFTLayer))
    opt.step()
    step()
    no_grad = [n for n, p in net.named_parameters() if p.grad is None or not p.grad.any()]
    assert not no_grad, no_grad


def test_condition_net_takes_several_maps_of_different_sizes():
    """A coarse map (e.g. a segmentation prior) and the image: each resized to the scale, then concatenated."""
    net = SFTConditionNet(4 + 3, cond_channels=5, num_scales=3)
    prior, img = torch.randn(2, 4, 3, 5), torch.randn(2, 3, 24, 40)
    sizes = [(3, 5), (6, 10), (24, 40)]
    conds = net([prior, img], sizes)
    assert [tuple(c.shape) for c in conds] == [(2, 5) + s for s in sizes]
    for s in sizes:  # prior enlarged bilinearly, image area-pooled, each on its own
        torch.testing.assert_close(
            net.signal_at([prior, img], s), torch.cat([resize_condition(prior, s), resize_condition(img, s)], 1)
        )
    torch.testing.assert_close(
        net.signal_at([prior, img], (6, 10))[:, 4:], torch.nn.functional.adaptive_avg_pool2d(img, (6, 10))
    )
    with pytest.raises(ValueError, match='7 channels in all'):
        net([prior, img[:, :2]], sizes)
    with pytest.raises(ValueError, match='batch size'):
        net([prior, img[:1]], sizes)
    with pytest.raises(ValueError, match='empty'):
        net([], sizes)
    with pytest.raises(ValueError, match=r'guidance map 1 must be a \[B, C, H, W\]'):
        net([prior, img[0]], sizes)
