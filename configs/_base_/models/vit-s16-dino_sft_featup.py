# DINO ViT-S/16 (fine-tuned) + FeatUpJBU (stride 16 -> 4, as vit-s16-dino_fcn_featup.py) + SFTGuidedHead from
# stride 4 to the image resolution (4 -> 2 -> 1), each stage modulated by SFT from the RGB image at that scale.
# Widths at strides 4, 2, 1 equal those of vit-s16-dino_sft.py.
_base_ = './vit-s16-dino_sft.py'
model = dict(
    neck=dict(type='FeatUpJBU', in_channels=384, in_index=0, out_size=None, output_stride=4, feature_strides=16),
    decode_head=dict(feature_stride=4, stage_channels=[64, 32, 32]),
)
