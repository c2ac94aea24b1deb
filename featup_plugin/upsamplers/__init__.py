"""Framework-free upsampler modules (plain ``torch.nn``)."""
from .jbu import IMAGENET_MEAN, IMAGENET_STD, JBULearnedRange, JBUStack, plan_stage_sizes, resize_guidance
from .layers import ChannelNorm

__all__ = ['JBULearnedRange', 'JBUStack', 'ChannelNorm', 'plan_stage_sizes', 'resize_guidance', 'IMAGENET_MEAN',
           'IMAGENET_STD']
from .downsamplers import AttentionDownsampler, BlurDownsampler, build_downsampler, gaussian_blur

__all__ += ['AttentionDownsampler', 'BlurDownsampler', 'build_downsampler', 'gaussian_blur']
