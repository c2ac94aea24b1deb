"""MMSegmentation decode heads (registered in mmseg's MODELS)."""
from .linear_probe_head import LinearProbeHead

__all__ = ['LinearProbeHead']
