from .guided_encoder_decoder import GuidedEncoderDecoder
from .pac_hotswap import build_pac_hot_swap

__all__ = ['GuidedEncoderDecoder', 'build_pac_hot_swap']
