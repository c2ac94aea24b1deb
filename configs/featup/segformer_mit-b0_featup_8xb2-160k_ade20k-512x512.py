_base_ = [
    '../_base_/models/segformer_mit-b0_featup.py',
    'mmseg::_base_/datasets/ade20k.py',
    '../_base_/default_runtime.py',
    '../_base_/schedules/segformer_160k.py',
]
checkpoint = 'https://download.openmmlab.com/mmsegmentation/v0.5/pretrain/segformer/mit_b0_20220624-7e0fe6dd.pth'  # noqa
crop_size = (512, 512)
model = dict(
    data_preprocessor=dict(size=crop_size),
    backbone=dict(init_cfg=dict(type='Pretrained', checkpoint=checkpoint)),
    decode_head=dict(num_classes=150),
)
train_dataloader = dict(batch_size=2)
