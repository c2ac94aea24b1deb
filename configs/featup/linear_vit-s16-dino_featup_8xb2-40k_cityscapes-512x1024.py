_base_ = [
    '../_base_/models/vit-s16-dino_linear_featup.py',
    'mmseg::_base_/datasets/cityscapes.py',
    '../_base_/default_runtime.py',
    '../_base_/schedules/probe_40k.py',
]
crop_size = (512, 1024)
model = dict(
    data_preprocessor=dict(size=crop_size),
    decode_head=dict(num_classes=19),
    test_cfg=dict(mode='slide', crop_size=(512, 1024), stride=(341, 683)),
)
train_dataloader = dict(batch_size=2)
