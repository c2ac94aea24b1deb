# The upsampler training on CPU in ~1-2 minutes: FeatUpJBUTrainer with a small random-init ViT (patch 8, 2 blocks,
# 64 channels; frozen) on the project's generated images resized to 64 px (8x8 tokens -> x8 with 3 JBU stages).
#   python3 tools/train.py configs/synthetic/jbu_vit-tiny-p8_1xb2-100i_featup-synth-64.py
# Same defaults as configs/featup/jbu_vit-s16-dino_1xb4-2k_images-224.py otherwise (5 views, attention
# downsampler, uncertainty loss, NAdam 1e-3); the generated dataset is created on first use.
_base_ = ['../_base_/default_runtime.py', '../_base_/schedules/featup_jbu.py', '../_base_/models/featup_jbu_trainer.py']
synthetic_data = dict(root='data/featup_synth', num_train=200, num_val=50, size=128, seed=0)
image_size = 64
max_iters = 100
model = dict(
    backbone=dict(
        type='TimmViT',
        model_name='vit_small_patch8_224',
        pretrained=False,
        frozen=True,
        model_kwargs=dict(depth=2, embed_dim=64, num_heads=2),
    ),
    feat_dim=64,
    num_stages=3,
    downsampler_kernel=8,
    max_pad=6,
)
train_dataloader = dict(
    batch_size=2,
    num_workers=0,
    persistent_workers=False,
    dataset=dict(root='data/featup_synth/img_dir/train', size=image_size),
)
train_cfg = dict(type='IterBasedTrainLoop', max_iters=max_iters)
default_hooks = dict(logger=dict(interval=10), checkpoint=dict(interval=max_iters))
