# The CPU model of fcn_r18_featup_1xb8-400i_featup-synth-128x128.py with the other guided upsampler: the PAC paper's
# joint upsampling network (guidance branch on the image, x2 PacConvTranspose2d stages, final convolutions; with a
# bilinear skip, so it starts as the bilinear twin) takes ResNet-18's stride-32 level to stride 4.
#   python3 tools/train.py configs/synthetic/fcn_r18_pacjoint_1xb8-400i_featup-synth-128x128.py
_base_ = './fcn_r18_featup_1xb8-400i_featup-synth-128x128.py'
model = dict(
    neck=dict(
        _delete_=True,
        type='PacJointUpsampler',  # one line: type='FeatUpJBU' -> type='PacJointUpsampler', same arguments
        in_channels=[32, 64, 128, 256],
        in_index=3,
        out_size=None,
        output_stride=4,
        feature_strides=[4, 8, 16, 32],
    )
)
