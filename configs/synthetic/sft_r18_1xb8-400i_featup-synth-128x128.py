# The CPU model of fcn_r18_featup_1xb8-400i_featup-synth-128x128.py without the FeatUp neck and with the SFT
# guided decoder as head: ResNet-18's stride-32 level upsampled x2 per stage to the image resolution
# (32 -> 16 -> 8 -> 4 -> 2 -> 1), each stage modulated by SFT from the RGB image at that scale. Widths are
# kept small at the fine scales (16 channels at strides 2 and 1) so that it trains on CPU.
#   python3 tools/train.py configs/synthetic/sft_r18_1xb8-400i_featup-synth-128x128.py
_base_ = './fcn_r18_featup_1xb8-400i_featup-synth-128x128.py'
norm_cfg = dict(type='BN', requires_grad=True)
model = dict(
    neck=None,
    decode_head=dict(
        _delete_=True,
        type='SFTGuidedHead',
        in_channels=256,
        in_index=3,
        feature_stride=32,
        output_stride=1,
        stage_channels=[64, 64, 32, 32, 16, 16],  # strides 32, 16, 8, 4, 2, 1
        channels=16,
        num_blocks=1,
        condition='image',
        cond_channels=16,
        dropout_ratio=0.1,
        num_classes=10,
        norm_cfg=norm_cfg,
        align_corners=False,
        loss_decode=dict(type='CrossEntropyLoss', use_sigmoid=False, loss_weight=1.0),
    ),
)
