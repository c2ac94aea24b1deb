"""MMSegmentation decode heads (registered in mmseg's MODELS)."""

from .linear_probe_head import LinearProbeHead
from .pac_crf_head import PacCRFHead
from .sft_guided_head import SFTGuidedHead

__all__ = ['LinearProbeHead', 'PacCRFHead', 'SFTGuidedHead']
