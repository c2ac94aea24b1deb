"""timm ViT helpers shared by tests/featurizers and tests/mmseg (imported after ``pytest.importorskip('timm')``)."""

import timm
import torch

SMALL = dict(depth=2)  # 2 blocks: fast on CPU


def bare_timm(name, seed, **kwargs):
    """A plain timm model (no head) of ``SMALL`` depth, seeded, in eval mode."""
    torch.manual_seed(seed)
    return timm.create_model(name, pretrained=False, num_classes=0, **SMALL, **kwargs).eval()


def tokens_to_map(tokens, prefix, h, w):
    """``[B, prefix + h*w, C]`` tokens -> the ``[B, C, h, w]`` map of the patch tokens."""
    return tokens[:, prefix:].reshape(tokens.shape[0], h, w, -1).permute(0, 3, 1, 2)
