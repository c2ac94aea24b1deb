"""featup_plugin.upsamplers.guidance: the guidance image recovered from normalised batches."""

import pytest
import torch

from featup_plugin.upsamplers import IMAGENET_MEAN, IMAGENET_STD, imagenet_guidance, recover_rgb

D = torch.float64


def _normalise(rgb255, order, mean, std):
    """What a framework feeds its model: channels in ``order``, ``(x - mean) / std`` on the 0-255 scale."""
    x = {'RGB': rgb255, 'BGR': rgb255.flip(1), 'L': rgb255[:, :1]}[order]
    n = x.shape[1]
    return (x - torch.tensor(mean, dtype=D).view(1, n, 1, 1)) / torch.tensor(std, dtype=D).view(1, n, 1, 1)


@pytest.mark.parametrize(
    'order, mean, std',
    [
        ('RGB', [123.675, 116.28, 103.53], [58.395, 57.12, 57.375]),
        ('BGR', [103.53, 116.28, 123.675], [57.375, 57.12, 58.395]),
        ('bgr', [10.0, 20.0, 30.0], [1.0, 2.0, 4.0]),
        ('L', [120.0], [60.0]),
    ],
)
def test_guidance_is_imagenet_normalised_rgb(order, mean, std):
    rgb255 = torch.rand(2, 3, 5, 7, dtype=D) * 255
    if order == 'L':
        rgb255 = rgb255[:, :1].expand(-1, 3, -1, -1)
    x = _normalise(rgb255, order.upper(), mean, std)
    torch.testing.assert_close(recover_rgb(x, mean, std, order), rgb255 / 255)
    imnet = (rgb255 / 255 - torch.tensor(IMAGENET_MEAN, dtype=D).view(1, 3, 1, 1)) / torch.tensor(
        IMAGENET_STD, dtype=D
    ).view(1, 3, 1, 1)
    out = imagenet_guidance(x, mean, std, order)
    assert out.shape == (2, 3, 5, 7) and out.dtype == D
    torch.testing.assert_close(out, imnet)


def test_already_normalised_batch_passes_through_and_errors_name_the_problem():
    x = torch.randn(1, 3, 4, 4)
    assert imagenet_guidance(x) is x
    with pytest.raises(ValueError, match=r'Neck guidance must be a \[B, 3, H, W\]'):
        imagenet_guidance(torch.randn(1, 4, 4, 4), who='Neck')
    with pytest.raises(ValueError, match='channel order must be one of'):
        imagenet_guidance(x, [0.0] * 3, [1.0] * 3, 'HSV')
    with pytest.raises(ValueError, match='needs 1 mean/std values'):
        imagenet_guidance(torch.randn(1, 1, 4, 4), [0.0] * 3, [1.0] * 3, 'L')
    with pytest.raises(ValueError, match='give std together with mean'):
        imagenet_guidance(x, [0.0] * 3)
