# FeatUp's JBU upsampler training (multi-view reconstruction, FeatUp's defaults) for DINO ViT-S/16 on ANY folder
# of images (recursive; jpg/png/bmp/webp/tif), 224 px, batch 4, 5 jittered views per step, attention
# downsampler, adaptive-uncertainty loss on 30-dim random projections, NAdam 1e-3. GPU recommended:
#   python3 tools/train.py configs/featup/jbu_vit-s16-dino_1xb4-2k_images-224.py \
#       --cfg-options train_dataloader.dataset.root=/path/to/images
#   torchrun --nproc_per_node=8 tools/train.py CONFIG --launcher pytorch --cfg-options ...   # DDP
# The checkpoint (work_dirs/.../iter_2000.pth) holds the stack under upsampler.*: load it with
#   neck=dict(type='FeatUpJBU', ..., init_cfg=dict(type='Pretrained', checkpoint='.../iter_2000.pth'))
# or MODEL.FEATUP.WEIGHTS in detectron2, or extract it: python3 tools/extract_upsampler.py CKPT jbu.pth
_base_ = ['../_base_/default_runtime.py', '../_base_/schedules/featup_jbu.py']
image_root = 'data/images'
image_size = 224
model = dict(
    type='FeatUpJBUTrainer',
    data_preprocessor=dict(type='BaseDataPreprocessor'),
    # frozen backbone; timm's DINO weights (needs the network once, or pretrained='/path/to/weights.pth')
    backbone=dict(type='TimmViT', model_name='vit_small_patch16_224.dino', pretrained=True, frozen=True),
    feat_dim=384, in_index=0,
    num_stages=4, radius=3, key_dim=32,
    downsampler='attention', downsampler_kernel=16,
    n_views=5, max_pad=20, max_zoom=2.0, proj_dim=30, tv_weight=0.0, seed=0)
train_dataloader = dict(
    batch_size=4, num_workers=4, persistent_workers=True,
    sampler=dict(type='InfiniteSampler', shuffle=True),
    collate_fn=dict(type='default_collate'),
    dataset=dict(type='ImageFolderDataset', root=image_root, size=image_size))
