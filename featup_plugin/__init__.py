"""featup_plugin: FeatUp (features at any resolution) for MMSegmentation and Detectron2.

The core (``ops``, ``upsamplers``, ``layers``, ``training``, ``checkpoint``, ``data``, ``evaluation``,
``featurizers``) needs only PyTorch (numpy, PIL and timm where said). The adapters:

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
