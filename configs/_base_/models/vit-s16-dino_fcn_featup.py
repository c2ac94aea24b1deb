# DINO ViT-S/16 (fine-tuned) + the JBU stack to stride 4 + an FCN head.
data_preprocessor = dict(
    type='SegDataPreProcessor',
    mean=[123.675, 116.28, 103.53],
    std=[58.395, 57.12, 57.375],
    bgr_to_rgb=True,
    pad_val=0,
    seg_pad_val=255)
norm_cfg = dict(type='SyncBN', requires_grad=True)
model = dict(
    type='GuidedEncoderDecoder',
    data_preprocessor=data_preprocessor,
    backbone=dict(
        type='TimmViT',
        model_name='vit_small_patch16_224.dino',
        pretrained=True,
        out_indices=(-1, ),
        frozen=False),
    neck=dict(
        type='FeatUpJBU',
        in_channels=384,
        in_index=0,
        out_size=None,
        output_stride=4,
        feature_strides=16),
    decode_head=dict(
        type='FCNHead',
        in_channels=384,
        in_index=0,
        channels=256,
        num_convs=2,
        concat_input=True,
        dropout_ratio=0.1,
        num_classes=150,
        norm_cfg=norm_cfg,
        align_corners=False,
        loss_decode=dict(type='CrossEntropyLoss', use_sigmoid=False, loss_weight=1.0)),
    train_cfg=dict(),
    test_cfg=dict(mode='slide', crop_size=(512, 512), stride=(341, 341)))
