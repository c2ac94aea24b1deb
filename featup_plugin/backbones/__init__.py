"""mmseg backbones (registered when this package is imported, i.e. when mmseg is importable)."""
from .timm_vit import TimmViT

__all__ = ['TimmViT']
