from .guided_encoder_decoder import GuidedEncoderDecoder

__all__ = ['GuidedEncoderDecoder']
