"""Framework-free upsampler modules (plain ``torch.nn``): FeatUp's JBU stack, its downsamplers, the guidance, the PAC
paper's joint upsampling network.

Derivation / details: docs/jbu.md, docs/training.md#downsamplers, docs/pac.md#joint-upsampling-network
"""

from .downsamplers import AttentionDownsampler, BlurDownsampler, build_downsampler, gaussian_blur
from .guidance import IMAGENET_MEAN, IMAGENET_STD, imagenet_guidance, recover_rgb
from .jbu import JBULearnedRange, JBUStack, num_x2_stages, plan_stage_sizes, resize_guidance
from .layers import ChannelNorm
from .pac_joint import PacJointUpsampler
from .target import check_target, derive_num_stages, target_size

__all__ = [
    'JBULearnedRange',
    'JBUStack',
    'ChannelNorm',
    'plan_stage_sizes',
    'num_x2_stages',
    'resize_guidance',
    'IMAGENET_MEAN',
    'IMAGENET_STD',
    'imagenet_guidance',
    'recover_rgb',
    'check_target',
    'target_size',
    'derive_num_stages',
    'PacJointUpsampler',
    'AttentionDownsampler',
    'BlurDownsampler',
    'build_downsampler',
    'gaussian_blur',
]
