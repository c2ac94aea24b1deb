"""MMSegmentation necks (registered in mmseg's MODELS)."""

from .featup_jbu import FeatUpJBU
from .pac_joint_upsampler import PacJointUpsamplerNeck
from .resize_neck import ResizeNeck

__all__ = ['FeatUpJBU', 'PacJointUpsamplerNeck', 'ResizeNeck']
