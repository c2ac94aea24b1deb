"""MMSegmentation necks (registered in mmseg's MODELS)."""

from .featup_jbu import FeatUpJBU
from .resize_neck import ResizeNeck

__all__ = ['FeatUpJBU', 'ResizeNeck']
