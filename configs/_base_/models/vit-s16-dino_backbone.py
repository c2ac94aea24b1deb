# The part shared by every vit-s16-dino_*.py model here: timm's DINO ViT-S/16 (patch tokens of the last block,
# fine-tuned; vit-s16-dino_linear_featup.py freezes it) behind GuidedEncoderDecoder, with mmseg's ImageNet data
# preprocessor, slide inference on 512x512 crops. The files inheriting it add the neck and the decode head.
data_preprocessor = dict(
    type='SegDataPreProcessor',
    mean=[123.675, 116.28, 103.53],
    std=[58.395, 57.12, 57.375],
    bgr_to_rgb=True,
    pad_val=0,
    seg_pad_val=255,
)
model = dict(
    type='GuidedEncoderDecoder',
    data_preprocessor=data_preprocessor,
    backbone=dict(
        type='TimmViT',
        model_name='vit_small_patch16_224.dino',
        pretrained=True,  # timm's hub weights; or a local file path
        out_indices=(-1,),
        frozen=False,
    ),
    train_cfg=dict(),
    test_cfg=dict(mode='slide', crop_size=(512, 512), stride=(341, 341)),
)
