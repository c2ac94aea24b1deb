"""Framework-free building blocks (plain ``torch.nn``): SFT conditioning, the PAC hot-swap, PAC-CRF, freezing.

Derivation / details: docs/sft.md#sft-layers, docs/pac.md#hot-swap, docs/pac.md#pac-crf
"""

from .freeze import FrozenPartsMixin, freeze
from .pac_crf import PacCRF
from .pac_hotswap import GuidanceSource, PacHotSwapConv2d, pac_hot_swap, swapped_layers
from .sft import CONDITION_SIGNALS, ResBlockSFT, SFTConditionNet, SFTLayer, resize_condition, sobel_magnitude

__all__ = [
    'SFTLayer',
    'ResBlockSFT',
    'SFTConditionNet',
    'sobel_magnitude',
    'resize_condition',
    'CONDITION_SIGNALS',
    'pac_hot_swap',
    'PacHotSwapConv2d',
    'GuidanceSource',
    'swapped_layers',
    'PacCRF',
    'freeze',
    'FrozenPartsMixin',
]
