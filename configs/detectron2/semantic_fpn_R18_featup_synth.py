# LazyConfig twin of semantic_fpn_R18_featup_synth.yaml: ResNet-18 + FeatUp JBU (res5, stride 32 -> 4, guided by
# the image) + SemSegFPNHead on the generated dataset, on CPU.
#   python3 tools/train_net_d2.py --config-file configs/detectron2/semantic_fpn_R18_featup_synth.py
#   python3 tools/train_net_d2.py --config-file ... train.device=cuda train.max_iter=800
import torch
from detectron2.config import LazyCall as L
from detectron2.data import (
    DatasetMapper,
    build_detection_test_loader,
    build_detection_train_loader,
    get_detection_dataset_dicts,
)
from detectron2.data import transforms as T
from detectron2.layers import ShapeSpec
from detectron2.modeling import SemanticSegmentor
from detectron2.modeling.backbone import BasicStem, ResNet
from detectron2.modeling.meta_arch.semantic_seg import SemSegFPNHead
from detectron2.solver import WarmupParamScheduler
from detectron2.solver.build import get_default_optimizer_params
from fvcore.common.param_scheduler import CosineParamScheduler
from omegaconf import OmegaConf

import featup_plugin.detectron2  # noqa: F401  (registers FeatUpBackbone and featup_synth_{train,val})
from featup_plugin.detectron2 import FeatUpBackbone, SemSegEvaluator  # d2's, reading labels NumPy-2-safely

INPUT_FORMAT = 'BGR'
IMAGE_SIZE = 128
NUM_CLASSES = 10
MAX_ITER = 400

model = L(SemanticSegmentor)(
    backbone=L(FeatUpBackbone)(
        base=L(ResNet)(
            stem=L(BasicStem)(in_channels=3, out_channels=64, norm='BN'),
            stages=L(ResNet.make_default_stages)(depth=18, norm='BN'),
            out_features=['res2', 'res3', 'res4', 'res5'],
            freeze_at=0,
        ),
        in_features=['res5'],
        mode='append',  # keeps res2..res5 and adds "featup" (512 channels, stride 4)
        output_stride=4,
        weights=None,  # optional JBUStack weights; weights_prefix='upsampler.' for FeatUp's files
        pixel_mean='${..pixel_mean}',
        pixel_std='${..pixel_std}',
        input_format=INPUT_FORMAT,
    ),
    sem_seg_head=L(SemSegFPNHead)(
        input_shape={'featup': L(ShapeSpec)(channels=512, stride=4)},
        num_classes=NUM_CLASSES,
        conv_dims=64,
        common_stride=4,  # = output_stride
        norm='GN',
        ignore_value=255,
    ),
    pixel_mean=[103.530, 116.280, 123.675],  # BGR, 0-255
    pixel_std=[57.375, 57.120, 58.395],
)

dataloader = OmegaConf.create()
dataloader.train = L(build_detection_train_loader)(
    dataset=L(get_detection_dataset_dicts)(names='featup_synth_train'),
    mapper=L(DatasetMapper)(
        is_train=True,
        augmentations=[
            L(T.ResizeShortestEdge)(short_edge_length=IMAGE_SIZE, max_size=IMAGE_SIZE),
            L(T.RandomFlip)(horizontal=True),
        ],
        image_format=INPUT_FORMAT,
    ),
    total_batch_size=8,
    num_workers=1,
)
dataloader.test = L(build_detection_test_loader)(
    dataset=L(get_detection_dataset_dicts)(names='featup_synth_val', filter_empty=False),
    mapper=L(DatasetMapper)(
        is_train=False,
        augmentations=[L(T.ResizeShortestEdge)(short_edge_length=IMAGE_SIZE, max_size=IMAGE_SIZE)],
        image_format=INPUT_FORMAT,
    ),
    num_workers=1,
)
dataloader.evaluator = L(SemSegEvaluator)(dataset_name='${..test.dataset.names}')

optimizer = L(torch.optim.SGD)(
    params=L(get_default_optimizer_params)(weight_decay_norm=0.0),  # params.model is set by the trainer
    lr=0.02,
    momentum=0.9,
    weight_decay=1e-4,
)
lr_multiplier = L(WarmupParamScheduler)(
    scheduler=L(CosineParamScheduler)(start_value=1.0, end_value=0.0),
    warmup_length=20 / MAX_ITER,
    warmup_factor=0.1,
)

train = dict(
    output_dir='./work_dirs/d2_lazy_semantic_fpn_R18_featup_synth',
    init_checkpoint='',
    max_iter=MAX_ITER,
    amp=dict(enabled=False),
    ddp=dict(broadcast_buffers=False, find_unused_parameters=False, fp16_compression=False),
    checkpointer=dict(period=MAX_ITER, max_to_keep=1),
    eval_period=MAX_ITER,
    log_period=20,
    device='cpu',
    seed=0,
)
