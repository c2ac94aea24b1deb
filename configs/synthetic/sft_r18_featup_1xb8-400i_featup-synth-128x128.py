# FeatUp neck + SFT guided decoder on the CPU model: FeatUpJBU takes ResNet-18's stride-32 level to stride 4
# (as fcn_r18_featup_1xb8-400i_featup-synth-128x128.py), then SFTGuidedHead goes from stride 4 to the image
# resolution (4 -> 2 -> 1) with SFT from the RGB image at each scale.
#   python3 tools/train.py configs/synthetic/sft_r18_featup_1xb8-400i_featup-synth-128x128.py
_base_ = './sft_r18_1xb8-400i_featup-synth-128x128.py'
model = dict(
    neck=dict(
        _delete_=True,  # the base has neck=None
        type='FeatUpJBU',
        in_channels=[32, 64, 128, 256],
        in_index=3,
        out_size=None,
        output_stride=4,
        feature_strides=[4, 8, 16, 32],
    ),
    decode_head=dict(feature_stride=4, stage_channels=[32, 16, 16]),
)  # strides 4, 2, 1 (widths as without neck)
