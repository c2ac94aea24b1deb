_base_ = [
    '../_base_/models/vit-s16-dino_linear_featup.py',
    'mmseg::_base_/datasets/ade20k.py',
    '../_base_/default_runtime.py',
    '../_base_/schedules/probe_40k.py',
]
crop_size = (512, 512)
model = dict(
    data_preprocessor=dict(size=crop_size),
    decode_head=dict(num_classes=150),
    test_cfg=dict(mode='slide', crop_size=(512, 512), stride=(341, 341)),
)
train_dataloader = dict(batch_size=2)
