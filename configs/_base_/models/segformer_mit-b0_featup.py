# SegFormer-B0 with the JBU stack on its coarsest level (stride 32 -> 4, where SegformerHead fuses the levels).
_base_ = 'mmseg::_base_/models/segformer_mit-b0.py'
model = dict(
    type='GuidedEncoderDecoder',
    neck=dict(
        type='FeatUpJBU',
        in_channels=[32, 64, 160, 256],
        in_index=3,
        out_size=None,
        output_stride=4,
        feature_strides=[4, 8, 16, 32],
    ),
)
