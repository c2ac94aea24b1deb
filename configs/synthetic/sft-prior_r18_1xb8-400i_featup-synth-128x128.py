# sft_r18_1xb8-400i_featup-synth-128x128.py with a segmentation prior as the SFT condition (as SFTGAN conditions
# on segmentation probability maps): the head predicts coarse class logits from ResNet-18's stride-32 level
# (a 1x1 convolution, the prior branch), and the softmax of that prior, resized to every scale (32 -> 1), drives
# the SFT layers instead of the image. An auxiliary cross-entropy (decode.loss_prior, weight 0.4) trains the
# prior branch as a segmentation prior. condition='prior+image' would give the condition network both.
#   python3 tools/train.py configs/synthetic/sft-prior_r18_1xb8-400i_featup-synth-128x128.py
_base_ = './sft_r18_1xb8-400i_featup-synth-128x128.py'
model = dict(decode_head=dict(condition='prior', prior_loss_weight=0.4, prior_detach=False))
