from .guided_encoder_decoder import GuidedEncoderDecoder, GuidedFeatures
from .pac_hotswap import build_pac_hot_swap

__all__ = ['GuidedEncoderDecoder', 'GuidedFeatures', 'build_pac_hot_swap']
