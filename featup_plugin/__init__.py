"""featup_plugin: FeatUp (features at any resolution) for MMSegmentation and Detectron2.

The core (``featup_plugin.ops``, ``featup_plugin.upsamplers``, ``featup_plugin.layers``) needs only PyTorch.
The framework adapters register themselves when their framework is importable.
"""
import importlib.util

from .version import __version__
from . import layers, ops, upsamplers

__all__ = ['__version__', 'layers', 'ops', 'upsamplers']

# MMSegmentation adapters: registered when mmseg is importable (custom_imports=dict(imports=['featup_plugin'])).
def _mmseg_available() -> bool:
    try:
        if importlib.util.find_spec('mmseg') is None:
            return False
        import mmseg  # noqa: F401
    except ImportError:
        return False
    return True


# Framework-free helpers that the adapters build on (generated dataset, boundary metric) live in
# featup_plugin.datasets / featup_plugin.evaluation; their mmseg registrations load with the adapters.
if _mmseg_available():
    from . import backbones, datasets, evaluation, heads, necks, segmentors, trainers  # noqa: F401
    __all__ += ['backbones', 'datasets', 'evaluation', 'heads', 'necks', 'segmentors', 'trainers']
