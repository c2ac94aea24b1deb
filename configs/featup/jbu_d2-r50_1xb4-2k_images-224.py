# FeatUp's JBU upsampler training (FeatUp's defaults, as jbu_vit-s16-dino_1xb4-2k_images-224.py) for a DETECTRON2
# backbone: ResNet-50 res5 (2048 channels, stride 32: 7x7 features at 224 px, x32 = 5 JBU stages), built by
# detectron2 itself from its config system (Detectron2Backbone: config_file / opts / name, any BACKBONE_REGISTRY
# entry). Needs detectron2 (bash tools/install_detectron2.sh). GPU recommended:
#   python3 tools/train.py configs/featup/jbu_d2-r50_1xb4-2k_images-224.py \
#       --cfg-options train_dataloader.dataset.root=/path/to/images \
#       model.backbone.weights=detectron2://ImageNetPretrained/MSRA/R-50.pkl   # or a local .pkl / .pth file
# Without weights the ResNet is random-init. The images arrive ImageNet-normalised RGB; the wrapper converts them
# to what the detectron2 weights expect (INPUT.FORMAT BGR, MODEL.PIXEL_MEAN/STD: detectron2's defaults, those of
# the MSRA R-50.pkl; change them with opts or pixel_mean/pixel_std/input_format for other weights).
# Other outputs: Detectron2Backbone.output_shapes(config_file, opts) lists channels and strides; feat_dim must
# match (checked at build time). The checkpoint holds the stack under upsampler.*: load it with detectron2's
# FeatUpBackbone (MODEL.FEATUP.WEIGHTS, MODEL.FEATUP.IN_FEATURES ['res5']) or the mmseg neck FeatUpJBU.
_base_ = ['../_base_/default_runtime.py', '../_base_/schedules/featup_jbu.py', '../_base_/models/featup_jbu_trainer.py']
image_root = 'data/images'
image_size = 224
model = dict(
    backbone=dict(
        type='Detectron2Backbone',
        config_file=None,  # e.g. a detectron2 yaml; opts are merged after it
        opts=['MODEL.RESNETS.DEPTH', 50, 'MODEL.RESNETS.OUT_FEATURES', ['res5']],
        name=None,  # default: MODEL.BACKBONE.NAME (build_resnet_backbone)
        out_feature='res5',
        weights=None,
    ),
    feat_dim=2048,
    num_stages=5,
    downsampler_kernel=32,
)  # FeatUp's other defaults: _base_/models/featup_jbu_trainer.py
train_dataloader = dict(dataset=dict(root=image_root, size=image_size))
