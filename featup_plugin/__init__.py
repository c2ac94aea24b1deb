"""featup_plugin: FeatUp (features at any resolution) for MMSegmentation and Detectron2.

The core (``ops``, ``upsamplers``, ``layers``, ``training``, ``checkpoint``, ``data``, ``evaluation``,
``featurizers``, ``hub``, ``viz``) needs only PyTorch (numpy, PIL and timm where said; ``viz``'s figure needs
matplotlib). ``featup_plugin.hub.load('dino16')`` is FeatUp's one-call API (``hub`` and ``viz`` are imported on
first use). The adapters:

* :mod:`featup_plugin.mmseg` registers the MMSegmentation modules. ``import featup_plugin`` does not import
  mmseg; it registers the adapter as soon as mmseg is imported (at once if it already is), so a config's
  ``custom_imports = dict(imports=['featup_plugin'])`` is all a user writes.
* :mod:`featup_plugin.detectron2` registers the detectron2 modules when imported.
"""

from . import layers, ops, upsamplers
from ._adapters import register_mmseg_adapter_on_import
from .version import __version__

__all__ = ['__version__', 'layers', 'ops', 'upsamplers']

register_mmseg_adapter_on_import()

_LAZY = ('hub', 'viz')


def __getattr__(name):  # PEP 562: featup_plugin.hub / featup_plugin.viz without importing timm up front
    if name in _LAZY:
        import importlib

        return importlib.import_module(f'.{name}', __name__)
    raise AttributeError(f'module {__name__!r} has no attribute {name!r}')
