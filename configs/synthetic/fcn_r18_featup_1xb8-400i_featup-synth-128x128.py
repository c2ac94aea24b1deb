# ResNet-18 + FeatUpJBU + FCN head on the generated dataset, on CPU in a few minutes, with the plain
# cross-entropy (the five thin / small classes end at 0 IoU with it). The base of the README's main job,
# fcn-cb_r18_featup_1xb8-400i_featup-synth-128x128.py (the same with a class-balanced cross-entropy), and of the
# PAC / SFT configs here.
#   python3 tools/train.py configs/synthetic/fcn_r18_featup_1xb8-400i_featup-synth-128x128.py
_base_ = [
    '../_base_/models/fcn_r18_featup_synth.py',
    '../_base_/datasets/featup_synth.py',
    '../_base_/default_runtime.py',
    '../_base_/schedules/synth_cpu.py',
]
