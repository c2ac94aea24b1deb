# Bilinear baseline twin of fcn_vit-s16-dino_featup_8xb2-80k_ade20k-512x512.py:
# the same model with the JBU upsampler replaced by bilinear resizing to the same size (ResizeNeck, with the
# same channel LayerNorm); everything else equal.
_base_ = './fcn_vit-s16-dino_featup_8xb2-80k_ade20k-512x512.py'
model = dict(neck=dict(_delete_=True, type='ResizeNeck', in_channels=384, in_index=0, out_size=None, output_stride=4))
