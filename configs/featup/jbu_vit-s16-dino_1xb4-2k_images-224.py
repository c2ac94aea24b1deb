# FeatUp's JBU upsampler training (multi-view reconstruction, FeatUp's defaults) for DINO ViT-S/16 on ANY folder
# of images (recursive; jpg/png/bmp/webp/tif), 224 px, batch 4, 5 jittered views per step, attention
# downsampler, adaptive-uncertainty loss on 30-dim random projections, NAdam 1e-3. GPU recommended:
#   python3 tools/train.py configs/featup/jbu_vit-s16-dino_1xb4-2k_images-224.py \
#       --cfg-options train_dataloader.dataset.root=/path/to/images
#   torchrun --nproc_per_node=8 tools/train.py CONFIG --launcher pytorch --cfg-options ...   # DDP
# The checkpoint (work_dirs/.../iter_2000.pth) holds the stack under upsampler.*: load it with
#   neck=dict(type='FeatUpJBU', ..., init_cfg=dict(type='Pretrained', checkpoint='.../iter_2000.pth'))
# or MODEL.FEATUP.WEIGHTS in detectron2, or extract it: python3 tools/model_converters/extract_upsampler.py CKPT jbu.pth
_base_ = ['../_base_/default_runtime.py', '../_base_/schedules/featup_jbu.py', '../_base_/models/featup_jbu_trainer.py']
image_root = 'data/images'
image_size = 224
model = dict(
    # frozen backbone; timm's DINO weights (needs the network once, or pretrained='/path/to/weights.pth')
    backbone=dict(type='TimmViT', model_name='vit_small_patch16_224.dino', pretrained=True, frozen=True),
    feat_dim=384,
    num_stages=4,
    downsampler_kernel=16,
)  # FeatUp's other defaults: _base_/models/featup_jbu_trainer.py
train_dataloader = dict(dataset=dict(root=image_root, size=image_size))
