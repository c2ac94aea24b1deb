# DINO ViT-S/16 (fine-tuned) + the JBU stack to stride 4 + an FCN head.
_base_ = './vit-s16-dino_backbone.py'
norm_cfg = dict(type='SyncBN', requires_grad=True)
model = dict(
    neck=dict(type='FeatUpJBU', in_channels=384, in_index=0, out_size=None, output_stride=4, feature_strides=16),
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
        loss_decode=dict(type='CrossEntropyLoss', use_sigmoid=False, loss_weight=1.0),
    ),
)
