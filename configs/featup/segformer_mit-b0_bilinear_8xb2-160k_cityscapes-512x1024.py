# Bilinear baseline twin of segformer_mit-b0_featup_8xb2-160k_cityscapes-512x1024.py:
# the same model with the JBU upsampler replaced by bilinear resizing to the same size (ResizeNeck, with the
# same channel LayerNorm); everything else equal.
_base_ = './segformer_mit-b0_featup_8xb2-160k_cityscapes-512x1024.py'
model = dict(
    neck=dict(
        _delete_=True, type='ResizeNeck', in_channels=[32, 64, 160, 256], in_index=3, out_size=None, output_stride=4
    )
)
