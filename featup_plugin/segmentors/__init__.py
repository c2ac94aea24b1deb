from .guided_encoder_decoder import GuidedEncoderDecoder, GuidedFeatures

__all__ = ['GuidedEncoderDecoder', 'GuidedFeatures']
