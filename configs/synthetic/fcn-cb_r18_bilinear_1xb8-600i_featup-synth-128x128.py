# Bilinear baseline twin of the main job fcn-cb_r18_featup_1xb8-600i_featup-synth-128x128.py: the same recipe
# (class-balanced cross-entropy, schedule, seed) with the JBU upsampler replaced by bilinear resizing to the same
# stride (ResizeNeck, same channel LayerNorm).
_base_ = './fcn-cb_r18_featup_1xb8-600i_featup-synth-128x128.py'
model = dict(
    neck=dict(
        _delete_=True, type='ResizeNeck', in_channels=[32, 64, 128, 256], in_index=3, out_size=None, output_stride=4
    )
)
