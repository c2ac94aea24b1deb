"""featup_plugin: FeatUp (features at any resolution) for MMSegmentation and Detectron2.

The core (``featup_plugin.ops``, ``featup_plugin.upsamplers``) needs only PyTorch. The framework adapters
register themselves when their framework is importable.
"""
from .version import __version__
from . import ops, upsamplers

__all__ = ['__version__', 'ops', 'upsamplers']
