# The main job (README): half-width ResNet-18 + FeatUpJBU (stride 32 -> 4, image-guided) + FCN head on the
# generated dataset, on CPU in a few minutes, with a class-balanced cross-entropy so that every class learns
# (with the plain cross-entropy of the base config, the five thin / small classes end at 0 IoU).
#   python3 tools/train.py configs/synthetic/fcn-cb_r18_featup_1xb8-600i_featup-synth-128x128.py
# Evaluation prints mIoU, thin_iou (mean IoU of wire, pole, vine), small_iou (pebble, marker) and bF.
_base_ = './fcn_r18_featup_1xb8-400i_featup-synth-128x128.py'  # same model, data, optimiser and seed; plain CE
# Median-frequency balancing from the training split's pixel frequencies f_c: w_c = median(f) / f_c, rescaled so
# that sum_c f_c * w_c = 1 (the loss keeps its scale):
#   python3 tools/analysis_tools/class_weights.py data/featup_synth/ann_dir/train --num-classes 10 --method median
# order: background, grass, water, brick, sand, wire, pole, vine, pebble, marker
class_weight = [0.301, 0.563, 0.656, 0.800, 0.637, 7.176, 5.409, 10.779, 11.890, 17.451]
model = dict(decode_head=dict(loss_decode=dict(class_weight=class_weight)))
# 600 iterations instead of 400 (same AdamW 2e-3, 20-iteration warm-up, poly decay): the rare classes gain most
max_iters = 600
param_scheduler = [
    dict(type='LinearLR', start_factor=0.1, by_epoch=False, begin=0, end=20),
    dict(type='PolyLR', eta_min=1e-5, power=0.9, begin=20, end=max_iters, by_epoch=False),
]
train_cfg = dict(type='IterBasedTrainLoop', max_iters=max_iters, val_interval=max_iters)
default_hooks = dict(checkpoint=dict(interval=max_iters))
