# A linear probe on frozen DINO ViT-S/16 tokens upsampled by the JBU stack (x16, to the image size), 1x1 conv
# head. NOT FeatUp's evaluation protocol: here the upsampler trains jointly with the probe on the labels (FeatUp
# trains it label-free first, then freezes it; docs/evaluation.md). For the frozen-upsampler variant add
# init_cfg=dict(type='Pretrained', checkpoint='path/to/jbu.pth') and freeze_upsampler=True to the neck.
_base_ = './vit-s16-dino_backbone.py'
model = dict(
    backbone=dict(frozen=True),  # the probe reads DINO's features as they are
    neck=dict(
        type='FeatUpJBU', in_channels=384, in_index=0, out_size='image', feature_strides=16, radius=3, key_dim=32
    ),
    decode_head=dict(
        type='LinearProbeHead',
        in_channels=384,
        in_index=0,
        num_classes=150,
        align_corners=False,
        loss_decode=dict(type='CrossEntropyLoss', use_sigmoid=False, loss_weight=1.0),
    ),
)
