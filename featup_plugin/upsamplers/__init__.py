"""Framework-free upsampler modules (plain ``torch.nn``)."""
from .jbu import JBULearnedRange, JBUStack, plan_stage_sizes, resize_guidance
from .layers import ChannelNorm

__all__ = ['JBULearnedRange', 'JBUStack', 'ChannelNorm', 'plan_stage_sizes', 'resize_guidance']
from .downsamplers import AttentionDownsampler, BlurDownsampler, build_downsampler, gaussian_blur

__all__ += ['AttentionDownsampler', 'BlurDownsampler', 'build_downsampler', 'gaussian_blur']
