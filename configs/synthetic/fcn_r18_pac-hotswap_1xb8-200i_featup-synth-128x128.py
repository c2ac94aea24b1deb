# PAC hot-swap fine-tuning on the generated dataset: the bilinear baseline segmentor (ResNet-18 + ResizeNeck +
# FCN head) with the two 3x3 convs of its last backbone block and the FCN head's conv turned into pixel-adaptive
# convolutions guided by the image (the backbone's input), then fine-tuned from the baseline's checkpoint:
#   python3 tools/train.py configs/synthetic/fcn_r18_bilinear_1xb8-400i_featup-synth-128x128.py
#   python3 tools/train.py configs/synthetic/fcn_r18_pac-hotswap_1xb8-200i_featup-synth-128x128.py \
#       --cfg-options load_from=work_dirs/fcn_r18_bilinear_1xb8-400i_featup-synth-128x128/iter_400.pth
# (or: python3 tools/model_converters/pac_hotswap.py <any segmentor config> <its checkpoint> --targets ... --guidance ...)
_base_ = './fcn_r18_bilinear_1xb8-400i_featup-synth-128x128.py'
model = dict(
    _delete_=True,
    type='PacHotSwap',
    model={{_base_.model}},
    targets=['backbone.layer4.1.conv1', 'backbone.layer4.1.conv2', 'decode_head.convs.0.conv'],
    guidance='backbone:input',
    kernel_type='gaussian',
    init_scale=1.0,
)
load_from = None  # the baseline's checkpoint; without one the swapped model starts from random weights
max_iters = 200
train_cfg = dict(type='IterBasedTrainLoop', max_iters=max_iters, val_interval=max_iters)
param_scheduler = [dict(type='PolyLR', eta_min=1e-5, power=0.9, begin=0, end=max_iters, by_epoch=False)]
optim_wrapper = dict(optimizer=dict(lr=5e-4))
default_hooks = dict(checkpoint=dict(interval=max_iters))
