# fcn-paccrf_r18_bilinear_1xb8-400i_featup-synth-128x128.py with the FeatUp neck (FeatUpJBU, stride 32 -> 4) instead
# of bilinear resizing: the PAC-CRF on the FCN head after the guided upsampler.
#   python3 tools/train.py configs/synthetic/fcn-paccrf_r18_featup_1xb8-400i_featup-synth-128x128.py
_base_ = './fcn_r18_featup_1xb8-400i_featup-synth-128x128.py'
model = dict(decode_head=dict(_delete_=True, type='PacCRFHead', head={{_base_.model.decode_head}}, num_iters=5))
