# sft-prior_r18_1xb8-400i_featup-synth-128x128.py with condition='prior+image': the condition network sees the
# head's own coarse segmentation prior (softmax of stride-32 class logits, trained by decode.loss_prior) AND the
# RGB image, each resized to every scale (32 -> 1) and concatenated.
#   python3 tools/train.py configs/synthetic/sft-prior-image_r18_1xb8-400i_featup-synth-128x128.py
_base_ = './sft-prior_r18_1xb8-400i_featup-synth-128x128.py'
model = dict(decode_head=dict(condition='prior+image'))
