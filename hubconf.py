"""torch.hub entry points: FeatUp's six upsamplers with their featurizers, as FeatUp's own ``hubconf.py`` names them.

    upsampler = torch.hub.load('<this repository on GitHub>', 'dino16')              # use_norm=True, pretrained
    upsampler = torch.hub.load('/path/to/featup_plugin', 'dinov2', source='local')   # a local checkout
    hr = upsampler(img)                                    # img: ImageNet-normalised RGB [B, 3, H, W]

Every entry takes the arguments of :func:`featup_plugin.hub.load` (``pretrained``, ``use_norm``,
``upsampler_weights``, ``backbone_weights``, ``device``, ``trust``, ``progress``) and returns its
``UpsampledBackbone`` (``.model``, ``.upsampler``, ``forward(img, output_size=None)``). See docs/hub.md.
"""

dependencies = ['torch', 'timm']

from featup_plugin.hub import load as _load  # noqa: E402


def vit(pretrained=True, use_norm=None, **kwargs):
    """FeatUp's ``vit``: supervised ViT-S/16 (timm AugReg) tokens + its JBU upsampler (384-d)."""
    return _load('vit', pretrained=pretrained, use_norm=use_norm, **kwargs)


def dino16(pretrained=True, use_norm=None, **kwargs):
    """FeatUp's ``dino16``: DINO ViT-S/16 tokens + its JBU upsampler (384-d)."""
    return _load('dino16', pretrained=pretrained, use_norm=use_norm, **kwargs)


def dinov2(pretrained=True, use_norm=None, **kwargs):
    """FeatUp's ``dinov2``: DINOv2 ViT-S/14 normed patch tokens + its JBU upsampler (384-d)."""
    return _load('dinov2', pretrained=pretrained, use_norm=use_norm, **kwargs)


def clip(pretrained=True, use_norm=None, **kwargs):
    """FeatUp's ``clip``: CLIP ViT-B/16 tokens through ln_post and the visual projection + its upsampler (512-d)."""
    return _load('clip', pretrained=pretrained, use_norm=use_norm, **kwargs)


def maskclip(pretrained=True, use_norm=None, **kwargs):
    """FeatUp's ``maskclip``: MaskCLIP value embeddings of CLIP ViT-B/16 + its upsampler (512-d, no ChannelNorm)."""
    return _load('maskclip', pretrained=pretrained, use_norm=use_norm, **kwargs)


def resnet50(pretrained=True, use_norm=None, **kwargs):
    """FeatUp's ``resnet50``: torchvision ResNet-50 ``layer4`` + its JBU upsampler (2048-d, stride 32)."""
    return _load('resnet50', pretrained=pretrained, use_norm=use_norm, **kwargs)
