_base_ = [
    '../_base_/models/fcn_r50_featup.py',
    'mmseg::_base_/datasets/ade20k.py',
    '../_base_/default_runtime.py',
    'mmseg::_base_/schedules/schedule_80k.py',
]
crop_size = (512, 512)
model = dict(data_preprocessor=dict(size=crop_size), decode_head=dict(num_classes=150))
train_dataloader = dict(batch_size=2)
