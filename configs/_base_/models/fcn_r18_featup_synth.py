# A small CPU model for the generated dataset: ResNet-18 at half width (v1c, strides 4..32, trained from
# scratch), the JBU stack taking the stride-32 level to stride 4 guided by the
# image, and an FCN head.
norm_cfg = dict(type='BN', requires_grad=True)
data_preprocessor = dict(
    type='SegDataPreProcessor',
    mean=[123.675, 116.28, 103.53],
    std=[58.395, 57.12, 57.375],
    bgr_to_rgb=True,
    pad_val=0,
    seg_pad_val=255,
    size_divisor=32,
)
model = dict(
    type='GuidedEncoderDecoder',
    data_preprocessor=data_preprocessor,
    backbone=dict(
        type='ResNetV1c',
        depth=18,
        stem_channels=32,
        base_channels=32,
        num_stages=4,
        out_indices=(0, 1, 2, 3),
        dilations=(1, 1, 1, 1),
        strides=(1, 2, 2, 2),
        norm_cfg=norm_cfg,
        norm_eval=False,
        style='pytorch',
        contract_dilation=True,
    ),
    neck=dict(
        type='FeatUpJBU',
        in_channels=[32, 64, 128, 256],
        in_index=3,
        out_size=None,
        output_stride=4,
        feature_strides=[4, 8, 16, 32],
    ),
    decode_head=dict(
        type='FCNHead',
        in_channels=256,
        in_index=3,
        channels=64,
        num_convs=1,
        concat_input=False,
        dropout_ratio=0.1,
        num_classes=10,
        norm_cfg=norm_cfg,
        align_corners=False,
        loss_decode=dict(type='CrossEntropyLoss', use_sigmoid=False, loss_weight=1.0),
    ),
    train_cfg=dict(),
    test_cfg=dict(mode='whole'),
)
