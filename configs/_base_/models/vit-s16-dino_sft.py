# DINO ViT-S/16 (fine-tuned) + SFTGuidedHead: a guided decoder that upsamples the stride-16 patch tokens x2 per
# stage to the image resolution (16 -> 8 -> 4 -> 2 -> 1), each stage modulated by SFT from the RGB image at
# that scale. No neck; GuidedEncoderDecoder hands the image to the head.
_base_ = './vit-s16-dino_backbone.py'
norm_cfg = dict(type='SyncBN', requires_grad=True)
model = dict(
    decode_head=dict(
        type='SFTGuidedHead',
        in_channels=384,
        in_index=0,
        feature_stride=16,
        output_stride=1,
        stage_channels=[256, 128, 64, 32, 32],
        channels=32,
        num_blocks=1,
        condition='image',
        cond_channels=32,
        dropout_ratio=0.1,
        num_classes=150,
        norm_cfg=norm_cfg,
        align_corners=False,
        loss_decode=dict(type='CrossEntropyLoss', use_sigmoid=False, loss_weight=1.0),
    )
)
