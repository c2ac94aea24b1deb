"""MMSegmentation decode heads (registered in mmseg's MODELS)."""

from .linear_probe_head import LinearProbeHead
from .sft_guided_head import SFTGuidedHead

__all__ = ['LinearProbeHead', 'SFTGuidedHead']
