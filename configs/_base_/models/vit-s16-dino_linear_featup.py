# FeatUp's linear-probe protocol: frozen DINO ViT-S/16, the JBU stack (x16, to the image size) on the patch
# tokens, a 1x1 conv head. The upsampler trains with the probe here; to start from upsampler weights trained by
# this project, add init_cfg=dict(type='Pretrained', checkpoint='path/to/jbu.pth') to the neck.
data_preprocessor = dict(
    type='SegDataPreProcessor',
    mean=[123.675, 116.28, 103.53],
    std=[58.395, 57.12, 57.375],
    bgr_to_rgb=True,
    pad_val=0,
    seg_pad_val=255)
model = dict(
    type='GuidedEncoderDecoder',
    data_preprocessor=data_preprocessor,
    backbone=dict(
        type='TimmViT',
        model_name='vit_small_patch16_224.dino',
        pretrained=True,  # timm's hub weights; or a local file path
        out_indices=(-1, ),
        frozen=True),
    neck=dict(
        type='FeatUpJBU',
        in_channels=384,
        in_index=0,
        out_size='image',
        feature_strides=16,
        radius=3,
        key_dim=32),
    decode_head=dict(
        type='LinearProbeHead',
        in_channels=384,
        in_index=0,
        num_classes=150,
        align_corners=False,
        loss_decode=dict(type='CrossEntropyLoss', use_sigmoid=False, loss_weight=1.0)),
    train_cfg=dict(),
    test_cfg=dict(mode='slide', crop_size=(512, 512), stride=(341, 341)))
