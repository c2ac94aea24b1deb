# FCN head refined by a PAC-CRF (PacCRFHead: 5 mean-field iterations at the image resolution, two position + colour
# kernels, Potts-initialised compatibility), trained end to end, on the bilinear CPU model
# (fcn_r18_bilinear_1xb8-400i_featup-synth-128x128.py). Its FeatUp twin: fcn-paccrf_r18_featup_...
#   python3 tools/train.py configs/synthetic/fcn-paccrf_r18_bilinear_1xb8-400i_featup-synth-128x128.py
_base_ = './fcn_r18_bilinear_1xb8-400i_featup-synth-128x128.py'
model = dict(decode_head=dict(_delete_=True, type='PacCRFHead', head={{_base_.model.decode_head}}, num_iters=5))
