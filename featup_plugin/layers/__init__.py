"""Framework-free building blocks (plain ``torch.nn``) for guided decoders."""
from .sft import (CONDITION_SIGNALS, ResBlockSFT, SFTConditionNet, SFTLayer, resize_condition,
                  sobel_magnitude)

__all__ = ['SFTLayer', 'ResBlockSFT', 'SFTConditionNet', 'sobel_magnitude', 'resize_condition',
           'CONDITION_SIGNALS']
