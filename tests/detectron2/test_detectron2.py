"""The detectron2 adapter (featup_plugin.detectron2) on real detectron2 code: models, configs, data, training."""

import importlib.util
import math
import os
import subprocess
import sys

import pytest
import torch

from tests import ROOT

pytest.importorskip('detectron2', reason='detectron2 is not installed (bash tools/install_detectron2.sh installs it)')

from detectron2.checkpoint import DetectionCheckpointer  # noqa: E402
from detectron2.config import LazyConfig, get_cfg, instantiate  # noqa: E402
from detectron2.data import DatasetCatalog, DatasetMapper, MetadataCatalog  # noqa: E402
from detectron2.modeling import Backbone, build_backbone, build_model  # noqa: E402
from detectron2.modeling.backbone.fpn import FPN  # noqa: E402
from detectron2.structures import BitMasks, Boxes, ImageList, Instances  # noqa: E402
from detectron2.utils.events import EventStorage  # noqa: E402

import featup_plugin.detectron2 as fd2  # noqa: E402
from featup_plugin.upsamplers import JBUStack  # noqa: E402
from tests.helpers import perturb  # noqa: E402

CONFIGS = os.path.join(ROOT, 'configs', 'detectron2')
SEMSEG_YAML = os.path.join(CONFIGS, 'semantic_fpn_R18_featup_synth.yaml')
IMNET_MEAN = torch.tensor(fd2.IMAGENET_MEAN).view(3, 1, 1)
IMNET_STD = torch.tensor(fd2.IMAGENET_STD).view(3, 1, 1)


@pytest.fixture(scope='module')
def synth_names(synth_root):
    """The conftest's tiny generated dataset (8 train / 4 val, 64x64), registered under test names."""
    return fd2.register_featup_synthetic(synth_root, prefix='featup_synth_test', generate=None, replace=True)


def make_cfg(path=SEMSEG_YAML, *opts):
    cfg = get_cfg()
    fd2.add_featup_config(cfg)
    cfg.merge_from_file(path)
    cfg.merge_from_list(['MODEL.DEVICE', 'cpu', 'MODEL.WEIGHTS', ''] + list(opts))
    return cfg


def rgb_to_input(rgb_uint8, fmt):
    """What a detectron2 DatasetMapper feeds the model for an RGB uint8 image: float CHW in INPUT.FORMAT."""
    img = rgb_uint8.float()
    if fmt == 'BGR':
        return img.flip(0)
    if fmt == 'L':
        return (img * torch.tensor([0.299, 0.587, 0.114]).view(3, 1, 1)).sum(0, keepdim=True)
    return img


# -- build_model and output shapes ------------------------------------------------------------------------------
def test_build_model_output_shapes_strides_and_stage_count():
    cfg = make_cfg()
    model = build_model(cfg)
    bb = model.backbone
    assert type(model).__name__ == 'SemanticSegmentor' and isinstance(bb, fd2.FeatUpBackbone)
    shapes = {k: (v.channels, v.stride) for k, v in bb.output_shape().items()}
    assert shapes == {'res2': (64, 4), 'res3': (128, 8), 'res4': (256, 16), 'res5': (512, 32), 'featup': (512, 4)}
    assert bb.upsampler('res5').num_stages == 3  # 32 -> 4: exactly the x2 stages needed
    assert bb.size_divisibility == 32 and bb.padding_constraints == {'size_divisibility': 32}
    assert list(model.sem_seg_head.in_features) == ['featup']
    x = torch.randn(2, 3, 64, 96)
    out = bb(x)
    assert list(out) == list(shapes)
    for name, (c, s) in shapes.items():
        assert tuple(out[name].shape) == (2, c, 64 // s, 96 // s), name


@pytest.mark.parametrize(
    'opts, name, channels, stride, stages, divisibility',
    [
        (['MODEL.FEATUP.MODE', 'replace', 'MODEL.SEM_SEG_HEAD.IN_FEATURES', ['res5']], 'res5', 512, 4, 3, 32),
        (['MODEL.FEATUP.SCALE_FACTOR', 4.0], 'featup', 512, 8, 2, 32),
        (['MODEL.FEATUP.OUTPUT_STRIDE', 1], 'featup', 512, 1, 5, 32),
        (['MODEL.FEATUP.IN_FEATURES', ['res4'], 'MODEL.FEATUP.OUTPUT_STRIDE', 2], 'featup', 256, 2, 3, 16),
    ],
)
def test_upsampling_targets(opts, name, channels, stride, stages, divisibility):
    bb = build_backbone(make_cfg(SEMSEG_YAML, *opts))
    shape = bb.output_shape()[name]
    assert (shape.channels, shape.stride) == (channels, stride)
    up_name = 'res4' if ['res4'] in opts else 'res5'
    assert bb.upsampler(up_name).num_stages == stages
    assert bb.size_divisibility == divisibility  # lcm of the upsampled feature's stride and the output stride
    out = bb(torch.randn(1, 3, 64, 32))[name]
    assert tuple(out.shape) == (1, channels, 64 // stride, 32 // stride)


def test_invalid_targets_raise():
    with pytest.raises(ValueError, match='coarser'):
        build_backbone(make_cfg(SEMSEG_YAML, 'MODEL.FEATUP.OUTPUT_STRIDE', 64))
    with pytest.raises(ValueError, match='integer stride'):
        build_backbone(make_cfg(SEMSEG_YAML, 'MODEL.FEATUP.SCALE_FACTOR', 3.0))
    with pytest.raises(ValueError, match='not all outputs'):
        build_backbone(make_cfg(SEMSEG_YAML, 'MODEL.FEATUP.IN_FEATURES', ['res6']))
    with pytest.raises(KeyError, match='BACKBONE_REGISTRY'):
        build_backbone(make_cfg(SEMSEG_YAML, 'MODEL.FEATUP.BASE_BACKBONE', 'no_such_backbone'))
    plain = get_cfg()
    plain.MODEL.BACKBONE.NAME = 'FeatUpBackbone'
    with pytest.raises(KeyError, match='add_featup_config'):
        build_backbone(plain)


# -- training and inference of SemanticSegmentor ----------------------------------------------------------------
@pytest.mark.slow
def test_semantic_segmentor_train_step_and_inference(synth_names):
    cfg = make_cfg(
        SEMSEG_YAML,
        'DATASETS.TRAIN',
        (synth_names[0],),
        'DATASETS.TEST',
        (synth_names[1],),
        'INPUT.MIN_SIZE_TRAIN',
        (64,),
        'INPUT.MAX_SIZE_TRAIN',
        64,
    )
    model = build_model(cfg)
    mapper = DatasetMapper(cfg, is_train=True)
    batch = [mapper(d) for d in DatasetCatalog.get(synth_names[0])[:2]]
    assert batch[0]['image'].shape == (3, 64, 64) and batch[0]['sem_seg'].shape == (64, 64)
    model.train()
    losses = model(batch)
    assert set(losses) == {'loss_sem_seg'} and torch.isfinite(losses['loss_sem_seg'])
    losses['loss_sem_seg'].backward()
    up = model.backbone.upsampler('res5')
    for n, p in list(up.named_parameters()) + list(model.backbone.norms.named_parameters()):
        assert p.grad is not None and torch.isfinite(p.grad).all(), n
    before = up.up1.range_proj[0].weight.detach().clone()
    torch.optim.SGD(model.parameters(), lr=0.1).step()
    assert not torch.equal(before, up.up1.range_proj[0].weight)

    model.eval()
    test_mapper = DatasetMapper(cfg, is_train=False)
    inputs = [test_mapper(d) for d in DatasetCatalog.get(synth_names[1])[:2]]
    inputs[1]['height'], inputs[1]['width'] = 80, 100  # the output is resized to the requested size
    with torch.no_grad():
        out = model(inputs)
    assert tuple(out[0]['sem_seg'].shape) == (10, 64, 64)
    assert tuple(out[1]['sem_seg'].shape) == (10, 80, 100)


@pytest.mark.parametrize('dtype', [torch.bfloat16, torch.float16], ids=['bfloat16', 'float16'])
def test_semantic_segmentor_under_autocast(synth_names, dtype):
    """The FeatUp backbone wrapper under CPU autocast (issue 18): loss close to float32, gradients finite."""
    cfg = make_cfg(SEMSEG_YAML, 'INPUT.MIN_SIZE_TRAIN', (64,), 'INPUT.MAX_SIZE_TRAIN', 64)
    torch.manual_seed(0)
    model = build_model(cfg)
    perturb(model.backbone.upsampler('res5'), scale=0.1)
    mapper = DatasetMapper(cfg, is_train=True)
    batch = [mapper(d) for d in DatasetCatalog.get(synth_names[0])[:2]]
    model.eval()  # BN statistics fixed: float32 and autocast compute the same function
    model.sem_seg_head.training = model.training = True  # ...but return the training loss
    want = model(batch)['loss_sem_seg']
    with torch.autocast('cpu', dtype=dtype):
        got = model(batch)['loss_sem_seg']
    assert torch.isfinite(got)
    torch.testing.assert_close(got.float(), want, rtol=5e-2, atol=1e-3)
    got.backward()
    up = model.backbone.upsampler('res5')
    for n, p in up.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), n
    assert up.up1.range_proj[0].weight.grad.abs().sum() > 0


def test_freeze_options():
    bb = build_backbone(make_cfg(SEMSEG_YAML, 'MODEL.FEATUP.FREEZE_UPSAMPLER', True, 'MODEL.FEATUP.FREEZE_BASE', True))
    bb.train()
    assert not any(p.requires_grad for p in bb.upsamplers.parameters())
    assert not any(p.requires_grad for p in bb.base.parameters())
    assert not bb.upsamplers.training and not bb.base.training and bb.training


# -- the guidance: un-normalising detectron2's input ------------------------------------------------------------
@pytest.mark.parametrize(
    'fmt, mean, std',
    [
        ('BGR', [103.53, 116.28, 123.675], [57.375, 57.12, 58.395]),
        ('RGB', [123.675, 116.28, 103.53], [58.395, 57.12, 57.375]),
        ('BGR', [100.0, 110.0, 120.0], [1.0, 1.0, 1.0]),  # detectron2's caffe2-style defaults (std 1)
    ],
)
def test_guidance_is_imagenet_normalised_rgb(fmt, mean, std):
    cfg = make_cfg(SEMSEG_YAML, 'INPUT.FORMAT', fmt, 'MODEL.PIXEL_MEAN', mean, 'MODEL.PIXEL_STD', std)
    model = build_model(cfg).eval()
    seen = {}
    model.backbone.upsampler('res5').register_forward_pre_hook(lambda m, args: seen.update(g=args[1]))
    rgb = torch.randint(0, 256, (3, 60, 52), dtype=torch.uint8)  # not a multiple of 32: the batch is padded
    with torch.no_grad():
        model([{'image': rgb_to_input(rgb, fmt)}])
    g = seen['g'][0]
    assert g.shape == (3, 64, 64)
    expected = (rgb.float() / 255 - IMNET_MEAN) / IMNET_STD
    torch.testing.assert_close(g[:, :60, :52], expected, atol=1e-4, rtol=1e-4)
    # detectron2 pads the normalised batch with 0, i.e. with pixel_mean: the padding is the mean colour
    mean_rgb = torch.tensor(mean if fmt == 'RGB' else mean[::-1]).view(3, 1, 1)
    torch.testing.assert_close(
        g[:, 60:, :], ((mean_rgb / 255 - IMNET_MEAN) / IMNET_STD).expand(3, 4, 64), atol=1e-4, rtol=1e-4
    )


def test_grey_input_format():
    bb = build_backbone(
        make_cfg(SEMSEG_YAML, 'INPUT.FORMAT', 'L', 'MODEL.PIXEL_MEAN', [120.0], 'MODEL.PIXEL_STD', [60.0])
    ).eval()
    grey = torch.rand(1, 1, 32, 32) * 255
    rgb = bb.recover_rgb((grey - 120.0) / 60.0)
    torch.testing.assert_close(rgb, (grey / 255).expand(1, 3, 32, 32))
    assert tuple(bb((grey - 120.0) / 60.0)['featup'].shape) == (1, 512, 8, 8)


# -- upsampler weights ------------------------------------------------------------------------------------------
def _random_stack(feat_dim, num_stages):
    return perturb(JBUStack(feat_dim, num_stages=num_stages))


def test_load_upsampler_weights_with_prefix(tmp_path):
    stack = _random_stack(512, 4)  # a FeatUp-style x16 stack; x8 (32 -> 4) uses its first 3 stages
    ckpt = {
        'state_dict': {
            **{f'upsampler.{k}': v for k, v in stack.state_dict().items()},
            'scale_net.net.weight': torch.zeros(1),
            'downsampler.kernel': torch.zeros(3),
        }
    }
    path = str(tmp_path / 'jbu.ckpt')
    torch.save(ckpt, path)
    bb = build_backbone(
        make_cfg(SEMSEG_YAML, 'MODEL.FEATUP.WEIGHTS', path, 'MODEL.FEATUP.WEIGHTS_PREFIX', 'upsampler.')
    )
    loaded = bb.upsampler('res5').state_dict()
    assert bb.upsampler('res5').num_stages == 3
    for k, v in loaded.items():
        torch.testing.assert_close(v, stack.state_dict()[k], rtol=0, atol=0, msg=k)
    assert 'up1.range_temp' in loaded and 'fixup_proj.1.weight' in loaded
    assert not any(k.startswith('up4') for k in loaded)

    # without a prefix, a stack under upsampler.* (FeatUp's, FeatUpJBUTrainer's checkpoints) is found
    auto = build_backbone(make_cfg(SEMSEG_YAML, 'MODEL.FEATUP.WEIGHTS', path)).upsampler('res5').state_dict()
    assert all(torch.equal(v, loaded[k]) for k, v in auto.items())
    torch.save({f'module.{k}': v for k, v in stack.state_dict().items()}, str(tmp_path / 'other.pth'))
    with pytest.raises(ValueError, match="set the prefix to 'module.'"):
        build_backbone(make_cfg(SEMSEG_YAML, 'MODEL.FEATUP.WEIGHTS', str(tmp_path / 'other.pth')))
    torch.save(_random_stack(256, 3).state_dict(), str(tmp_path / 'small.pth'))
    with pytest.raises(RuntimeError, match='does not fit'):
        build_backbone(make_cfg(SEMSEG_YAML, 'MODEL.FEATUP.WEIGHTS', str(tmp_path / 'small.pth')))
    torch.save(_random_stack(512, 2).state_dict(), str(tmp_path / 'two.pth'))  # fewer stages than needed
    with pytest.raises(RuntimeError, match='missing'):
        build_backbone(make_cfg(SEMSEG_YAML, 'MODEL.FEATUP.WEIGHTS', str(tmp_path / 'two.pth')))


def test_load_weights_of_several_upsamplers(tmp_path):
    opts = ['MODEL.FEATUP.IN_FEATURES', ['res4', 'res5'], 'MODEL.SEM_SEG_HEAD.IN_FEATURES', ['featup_res5']]
    src = build_backbone(make_cfg(SEMSEG_YAML, *opts))
    assert {k: v.stride for k, v in src.output_shape().items() if k.startswith('featup')} == {
        'featup_res4': 4,
        'featup_res5': 4,
    }
    with torch.no_grad():
        for p in src.upsamplers.parameters():
            p.add_(torch.randn_like(p))
    path = str(tmp_path / 'ups.pth')
    torch.save(src.upsamplers.state_dict(), path)
    dst = build_backbone(make_cfg(SEMSEG_YAML, *opts, 'MODEL.FEATUP.WEIGHTS', path))
    for (k, a), b in zip(src.upsamplers.state_dict().items(), dst.upsamplers.state_dict().values()):
        assert torch.equal(a, b), k
    # the checkpoint of a whole detectron2 model (the stacks under backbone.upsamplers.<feature>.)
    torch.save({'model': {f'backbone.{k}': v for k, v in src.state_dict().items()}}, path)
    dst = build_backbone(make_cfg(SEMSEG_YAML, *opts, 'MODEL.FEATUP.WEIGHTS', path))
    for (k, a), b in zip(src.upsamplers.state_dict().items(), dst.upsamplers.state_dict().values()):
        assert torch.equal(a, b), k
    torch.save(_random_stack(512, 3).state_dict(), str(tmp_path / 'one.pth'))
    with pytest.raises(ValueError, match='upsamples 2 features'):
        build_backbone(make_cfg(SEMSEG_YAML, *opts, 'MODEL.FEATUP.WEIGHTS', str(tmp_path / 'one.pth')))


def test_imagenet_style_checkpoint_loads_into_the_wrapped_base(tmp_path):
    """MODEL.WEIGHTS holding a plain ResNet (the .pkl format of detectron2's convert-torchvision-to-d2.py) reaches
    backbone.base through detectron2's name-matching heuristics, as ImageNet weights for R-50 do."""
    import pickle

    plain = build_backbone(make_cfg(SEMSEG_YAML, 'MODEL.BACKBONE.NAME', 'build_resnet_backbone'))
    path = str(tmp_path / 'R-18.pkl')
    with open(path, 'wb') as f:
        pickle.dump(
            {
                'model': {k: v.numpy() for k, v in plain.state_dict().items()},
                '__author__': 'test',
                'matching_heuristics': True,
            },
            f,
        )
    model = build_model(make_cfg())
    DetectionCheckpointer(model).load(path)
    for k, v in plain.state_dict().items():
        assert torch.equal(model.backbone.base.state_dict()[k], v), k


# -- padding constraints ----------------------------------------------------------------------------------------
def test_padding_constraints_are_honoured_by_imagelist():
    cfg = make_cfg()
    model = build_model(cfg)
    bb = model.backbone
    images = [torch.randn(3, 50, 70), torch.randn(3, 61, 45)]
    il = ImageList.from_tensors(images, bb.size_divisibility, padding_constraints=bb.padding_constraints)
    assert tuple(il.tensor.shape[-2:]) == (64, 96)
    out = bb(il.tensor)
    for name, spec in bb.output_shape().items():
        assert tuple(out[name].shape[-2:]) == (64 // spec.stride, 96 // spec.stride), name
    # the whole segmentor on odd sizes, training (targets padded alike) and inference
    rgb = [torch.randint(0, 256, (3, h, w)).float() for h, w in ((50, 70), (61, 45))]
    batch = [{'image': im, 'sem_seg': torch.randint(0, 10, im.shape[-2:])} for im in rgb]
    model.train()
    assert torch.isfinite(model(batch)['loss_sem_seg'])
    model.eval()
    with torch.no_grad():
        res = model([{'image': im} for im in rgb])
    assert [tuple(r['sem_seg'].shape) for r in res] == [(10, 50, 70), (10, 61, 45)]


class SquarePaddedBackbone(Backbone):
    """A real detectron2 Backbone asking for square padding (as ViTDet does), around a ResNet."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, x):
        return self.inner(x)

    def output_shape(self):
        return self.inner.output_shape()

    @property
    def padding_constraints(self):
        return {'square_size': 96}


def test_square_size_of_the_base_is_kept():
    inner = build_backbone(make_cfg(SEMSEG_YAML, 'MODEL.BACKBONE.NAME', 'build_resnet_backbone'))
    bb = fd2.FeatUpBackbone(SquarePaddedBackbone(inner), in_features=['res5'], mode='append', output_stride=8)
    assert bb.padding_constraints == {'square_size': 96, 'size_divisibility': 32}
    il = ImageList.from_tensors(
        [torch.randn(3, 40, 70)], bb.size_divisibility, padding_constraints=bb.padding_constraints
    )
    assert tuple(il.tensor.shape[-2:]) == (96, 96)
    assert tuple(bb(il.tensor)['featup'].shape) == (1, 512, 12, 12)


# -- timm backbones ---------------------------------------------------------------------------------------------
def test_timm_vit_patch14_local_weights_and_divisibility(tmp_path):
    import timm

    src = timm.create_model('vit_small_patch14_dinov2', depth=1, img_size=56)
    path = str(tmp_path / 'vit.pth')
    torch.save(src.state_dict(), path)
    cfg = make_cfg(
        os.path.join(CONFIGS, 'semantic_fpn_vit-s16_featup_synth.yaml'),
        'MODEL.FEATUP.TIMM_MODEL',
        'vit_small_patch14_dinov2',
        'MODEL.FEATUP.TIMM_PRETRAINED',
        path,
    )
    cfg.MODEL.FEATUP.TIMM_KWARGS.depth = 1
    model = build_model(cfg)
    bb = model.backbone
    assert isinstance(bb.base, fd2.TimmBackbone)
    assert {k: (v.channels, v.stride) for k, v in bb.output_shape().items()} == {'vit': (384, 14), 'featup': (384, 4)}
    assert bb.size_divisibility == 28  # lcm(patch 14, output stride 4)
    vit_params = dict(bb.base.model.named_parameters())
    qkv = [v for k, v in vit_params.items() if k.endswith('blocks.0.attn.qkv.weight')][0]
    assert torch.equal(qkv, src.blocks[0].attn.qkv.weight)
    il = ImageList.from_tensors(
        [torch.randn(3, 50, 70), torch.randn(3, 61, 45)],
        bb.size_divisibility,
        padding_constraints=bb.padding_constraints,
    )
    assert tuple(il.tensor.shape[-2:]) == (84, 84)
    out = bb(il.tensor)
    assert tuple(out['vit'].shape) == (2, 384, 6, 6) and tuple(out['featup'].shape) == (2, 384, 21, 21)
    model.train()
    batch = [{'image': torch.randint(0, 256, (3, 56, 56)).float(), 'sem_seg': torch.randint(0, 10, (56, 56))}]
    assert torch.isfinite(model(batch)['loss_sem_seg'])


def test_timm_cnn_backbone_names_and_strides():
    bb = fd2.TimmBackbone('resnet18', out_indices=[1, 2, 3, 4])
    assert {k: (v.channels, v.stride) for k, v in bb.output_shape().items()} == {
        'layer1': (64, 4),
        'layer2': (128, 8),
        'layer3': (256, 16),
        'layer4': (512, 32),
    }
    assert bb.size_divisibility == 32
    with pytest.raises(ValueError, match='not a timm model'):
        fd2.TimmBackbone('no_such_model_xyz')


# -- detection: FPN and Mask R-CNN ------------------------------------------------------------------------------
def test_fpn_over_featup_and_mask_rcnn_step():
    cfg = make_cfg(
        os.path.join(CONFIGS, 'mask_rcnn_R50_FPN_featup_1x.yaml'),
        'MODEL.RESNETS.DEPTH',
        18,
        'MODEL.RESNETS.RES2_OUT_CHANNELS',
        64,
        'MODEL.FPN.OUT_CHANNELS',
        32,
        'MODEL.ROI_BOX_HEAD.FC_DIM',
        64,
        'MODEL.ROI_MASK_HEAD.CONV_DIM',
        32,
        'MODEL.RPN.PRE_NMS_TOPK_TRAIN',
        50,
        'MODEL.RPN.POST_NMS_TOPK_TRAIN',
        20,
        'MODEL.RPN.PRE_NMS_TOPK_TEST',
        50,
        'MODEL.RPN.POST_NMS_TOPK_TEST',
        20,
        'MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE',
        16,
        'MODEL.ROI_HEADS.NUM_CLASSES',
        3,
    )
    model = build_model(cfg)
    fpn = model.backbone
    assert isinstance(fpn, FPN) and isinstance(fpn.bottom_up, fd2.FeatUpBackbone)
    assert fpn.in_features == ('featup', 'res3', 'res4', 'res5')
    assert {k: v.stride for k, v in fpn.output_shape().items()} == {'p2': 4, 'p3': 8, 'p4': 16, 'p5': 32, 'p6': 64}
    assert fpn.size_divisibility == 32 and fpn.padding_constraints['size_divisibility'] == 32
    il = ImageList.from_tensors(
        [torch.randn(3, 50, 70)], fpn.size_divisibility, padding_constraints=fpn.padding_constraints
    )
    feats = fpn(il.tensor)
    assert {k: tuple(v.shape[-2:]) for k, v in feats.items()} == {
        'p2': (16, 24),
        'p3': (8, 12),
        'p4': (4, 6),
        'p5': (2, 3),
        'p6': (1, 2),
    }

    inst = Instances((64, 64))
    inst.gt_boxes = Boxes(torch.tensor([[8.0, 8.0, 40.0, 40.0]]))
    inst.gt_classes = torch.tensor([1])
    mask = torch.zeros(1, 64, 64, dtype=torch.bool)
    mask[:, 8:40, 8:40] = True
    inst.gt_masks = BitMasks(mask)
    model.train()
    with EventStorage(0):
        losses = model([{'image': torch.randint(0, 256, (3, 64, 64)).float(), 'instances': inst}])
    assert {'loss_rpn_cls', 'loss_cls', 'loss_mask'} <= set(losses)
    sum(losses.values()).backward()
    assert fpn.bottom_up.upsampler('res5').up1.range_proj[0].weight.grad is not None
    model.eval()
    with torch.no_grad():
        res = model([{'image': torch.randint(0, 256, (3, 50, 70)).float()}])
    assert res[0]['instances'].image_size == (50, 70)


# -- the dataset ------------------------------------------------------------------------------------------------
def test_dataset_registration(synth_names, tmp_path):
    assert synth_names == ['featup_synth_test_train', 'featup_synth_test_val']
    assert {'featup_synth_train', 'featup_synth_val'} <= set(DatasetCatalog.list())  # registered at import
    records = DatasetCatalog.get(synth_names[0])
    assert len(records) == 8 and len(DatasetCatalog.get(synth_names[1])) == 4
    assert all(os.path.isfile(r['file_name']) and os.path.isfile(r['sem_seg_file_name']) for r in records)
    assert (records[0]['height'], records[0]['width']) == (64, 64)
    meta = MetadataCatalog.get(synth_names[1])
    assert meta.evaluator_type == 'sem_seg' and meta.ignore_label == 255 and len(meta.stuff_classes) == 10

    root = str(tmp_path / 'gen')
    names = fd2.register_featup_synthetic(root, prefix='featup_synth_gen', generate=None, replace=True)
    with pytest.raises(FileNotFoundError, match='tools/dataset_converters/generate_dataset.py'):
        DatasetCatalog.get(names[0])
    names = fd2.register_featup_synthetic(
        root, prefix='featup_synth_gen', replace=True, generate=dict(num_train=2, num_val=1, size=32, seed=0)
    )
    assert len(DatasetCatalog.get(names[0])) == 2 and len(DatasetCatalog.get(names[1])) == 1
    with pytest.raises(ValueError, match='already registered'):
        fd2.register_featup_synthetic(root, prefix='featup_synth_gen')


# -- configs and the training tool ------------------------------------------------------------------------------
def _load_train_net():
    spec = importlib.util.spec_from_file_location('train_net_d2', os.path.join(ROOT, 'tools', 'train_net_d2.py'))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.slow
def test_train_net_d2_yaml_train_then_eval_only(synth_names, tmp_path):
    tool = _load_train_net()
    out = str(tmp_path / 'run')
    common = [
        'DATASETS.TRAIN',
        f"('{synth_names[0]}',)",
        'DATASETS.TEST',
        f"('{synth_names[1]}',)",
        'OUTPUT_DIR',
        out,
        'INPUT.MIN_SIZE_TRAIN',
        '(64,)',
        'INPUT.MAX_SIZE_TRAIN',
        '64',
        'INPUT.MIN_SIZE_TEST',
        '64',
        'INPUT.MAX_SIZE_TEST',
        '64',
        'DATALOADER.NUM_WORKERS',
        '0',
    ]
    args = tool.parse_args(
        [
            '--config-file',
            SEMSEG_YAML,
            'SOLVER.MAX_ITER',
            '2',
            'SOLVER.IMS_PER_BATCH',
            '2',
            'SOLVER.WARMUP_ITERS',
            '1',
            'TEST.EVAL_PERIOD',
            '2',
            'SOLVER.CHECKPOINT_PERIOD',
            '2',
        ]
        + common
    )
    res = tool.main(args)
    assert math.isfinite(res['sem_seg']['mIoU']) and os.path.isfile(os.path.join(out, 'model_final.pth'))
    args = tool.parse_args(
        ['--config-file', SEMSEG_YAML, '--eval-only', 'MODEL.WEIGHTS', os.path.join(out, 'model_final.pth')] + common
    )
    again = tool.main(args)
    assert again['sem_seg']['mIoU'] == pytest.approx(res['sem_seg']['mIoU'])


@pytest.mark.slow
def test_lazy_config_trains_and_evaluates(synth_names, tmp_path):
    cfg = LazyConfig.load(os.path.join(CONFIGS, 'semantic_fpn_R18_featup_synth.py'))
    bb = instantiate(cfg.model.backbone)
    assert bb.pixel_mean == (103.53, 116.28, 123.675) and bb.input_format == 'BGR'  # interpolated from the model
    tool = _load_train_net()
    out = str(tmp_path / 'lazy')
    args = tool.parse_args(
        [
            '--config-file',
            os.path.join(CONFIGS, 'semantic_fpn_R18_featup_synth.py'),
            'train.max_iter=2',
            'train.eval_period=2',
            'train.checkpointer.period=2',
            f'train.output_dir={out}',
            'dataloader.train.total_batch_size=2',
            'dataloader.train.num_workers=0',
            'dataloader.test.num_workers=0',
            f'dataloader.train.dataset.names={synth_names[0]}',
            f'dataloader.test.dataset.names={synth_names[1]}',
        ]
    )
    res = tool.main(args)
    assert math.isfinite(res['sem_seg']['mIoU']) and os.path.isfile(os.path.join(out, 'model_final.pth'))


@pytest.mark.slow
def test_featup_plugin_alone_does_not_import_detectron2():
    """``import featup_plugin`` leaves detectron2 alone; ``featup_plugin.detectron2`` without it names the installer.
    (MMSegmentation's stack is blocked only to keep the subprocess fast: it is not what is tested here.)"""
    code = """
import sys, importlib.abc
class Block(importlib.abc.MetaPathFinder):
    blocked = {"mmseg", "mmcv", "mmengine", "mmdet"}
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in self.blocked:
            raise ImportError(f"{name} is blocked for this test")
sys.meta_path.insert(0, Block())
import featup_plugin
assert "detectron2" not in sys.modules, "import featup_plugin imported detectron2"
Block.blocked.add("detectron2")
try:
    import featup_plugin.detectron2
except ImportError as e:
    print(e)
"""
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get('PYTHONPATH', ''))
    res = subprocess.run([sys.executable, '-c', code], env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    assert 'tools/install_detectron2.sh' in res.stdout


# -- Detectron2Backbone: a detectron2 backbone in mmengine configs (the upsampler training's frozen backbone) ------
R18 = ['MODEL.RESNETS.DEPTH', 18, 'MODEL.RESNETS.RES2_OUT_CHANNELS', 64]


def _mm():
    pytest.importorskip('mmseg', reason='MMSegmentation is not installed')
    from mmseg.registry import MODELS

    import featup_plugin  # noqa: F401  registers the mmseg modules

    return MODELS


def _imagenet_normalised(rgb_uint8):
    return ((rgb_uint8.float() / 255 - IMNET_MEAN) / IMNET_STD).unsqueeze(0)


@pytest.mark.parametrize(
    'fmt, mean, std',
    [
        (None, [103.53, 116.28, 123.675], [1.0, 1.0, 1.0]),  # detectron2's defaults (BGR, caffe2 ResNets)
        ('RGB', [123.675, 116.28, 103.53], [58.395, 57.12, 57.375]),  # torchvision-style weights
        ('L', [120.0], [60.0]),
    ],
)
def test_detectron2_backbone_converts_imagenet_rgb_to_the_d2_input(fmt, mean, std):
    MODELS = _mm()
    extra = {} if fmt is None else dict(input_format=fmt, pixel_mean=mean, pixel_std=std)
    bb = MODELS.build(
        dict(
            type='Detectron2Backbone',
            opts=R18 + ['MODEL.RESNETS.OUT_FEATURES', ['res3', 'res4']],
            out_feature='res4',
            **extra,
        )
    )
    assert (bb.out_channels, bb.out_stride, bb.input_format) == (256, 16, fmt or 'BGR')
    assert bb.pixel_mean == tuple(mean) and bb.pixel_std == tuple(std)
    rgb = torch.randint(0, 256, (3, 48, 64), dtype=torch.uint8)
    manual = (
        (rgb_to_input(rgb, fmt or 'BGR') - torch.tensor(mean).view(-1, 1, 1)) / torch.tensor(std).view(-1, 1, 1)
    ).unsqueeze(0)
    x = _imagenet_normalised(rgb)
    torch.testing.assert_close(bb.to_detectron2_input(x), manual, atol=2e-4, rtol=1e-5)
    with torch.no_grad():
        direct = bb.model(manual)['res4']
    out = bb(x)
    assert out.shape == (1, 256, 3, 4)
    torch.testing.assert_close(out, direct, atol=1e-4 * float(direct.abs().max()), rtol=1e-4)


def test_detectron2_backbone_pads_to_size_divisibility_and_crops():
    MODELS = _mm()
    bb = MODELS.build(
        dict(
            type='Detectron2Backbone',
            name='build_resnet_fpn_backbone',
            out_feature='p3',
            opts=R18
            + [
                'MODEL.RESNETS.OUT_FEATURES',
                ['res2', 'res3', 'res4', 'res5'],
                'MODEL.FPN.IN_FEATURES',
                ['res2', 'res3', 'res4', 'res5'],
                'MODEL.FPN.OUT_CHANNELS',
                32,
            ],
        )
    )
    assert (bb.size_divisibility, bb.out_channels, bb.out_stride) == (32, 32, 8)
    rgb = torch.randint(0, 256, (3, 50, 70), dtype=torch.uint8)
    x = _imagenet_normalised(rgb)
    out = bb(x)
    assert out.shape == (1, 32, 7, 9)  # ceil(50 / 8), ceil(70 / 8)
    padded = torch.nn.functional.pad(bb.to_detectron2_input(x), (0, 26, 0, 14))  # 64 x 96, as ImageList pads
    with torch.no_grad():
        direct = bb.model(padded)['p3']
    assert direct.shape[-2:] == (8, 12)
    torch.testing.assert_close(out, direct[..., :7, :9])
    bb.square_size = 64  # a backbone padding to squares (ViTDet) smaller than the input: a clear error
    with pytest.raises(ValueError, match='square'):
        bb(x)


def test_detectron2_backbone_errors(monkeypatch):
    MODELS = _mm()
    with pytest.raises(ValueError, match=r"'res9' is not an output.*res4 \(256 channels, stride 16\)"):
        MODELS.build(dict(type='Detectron2Backbone', opts=R18, out_feature='res9'))
    with pytest.raises(KeyError, match='BACKBONE_REGISTRY'):
        MODELS.build(dict(type='Detectron2Backbone', name='no_such_backbone'))
    with pytest.raises(ValueError, match='alternate keys and values'):
        MODELS.build(dict(type='Detectron2Backbone', opts=['MODEL.RESNETS.DEPTH']))
    with pytest.raises(ValueError, match=r'set feat_dim=256'):
        MODELS.build(dict(type='FeatUpJBUTrainer', feat_dim=128, backbone=dict(type='Detectron2Backbone', opts=R18)))
    from featup_plugin.mmseg.backbones import Detectron2Backbone

    assert Detectron2Backbone.output_shapes(opts=R18 + ['MODEL.RESNETS.OUT_FEATURES', ['res2', 'res5']]) == {
        'res2': dict(channels=64, stride=4),
        'res5': dict(channels=512, stride=32),
    }
    monkeypatch.setitem(sys.modules, 'detectron2', None)  # as if detectron2 were not installed
    with pytest.raises(ImportError, match='tools/install_detectron2.sh'):
        MODELS.build(dict(type='Detectron2Backbone'))


def test_detectron2_backbone_weights(tmp_path):
    MODELS = _mm()
    import pickle

    cfg = dict(type='Detectron2Backbone', opts=R18 + ['MODEL.RESNETS.OUT_FEATURES', ['res3']])
    src = MODELS.build(cfg).model
    with torch.no_grad():
        for p in src.parameters():
            p.add_(torch.randn_like(p))
    ref = {k: v.clone() for k, v in src.state_dict().items()}
    # a whole detectron2 model's checkpoint: the backbone is under backbone.*
    path = str(tmp_path / 'model_final.pth')
    torch.save({'model': {**{f'backbone.{k}': v for k, v in ref.items()}, 'sem_seg_head.w': torch.zeros(2)}}, path)
    bb = MODELS.build(dict(cfg, weights=path))
    assert all(torch.equal(bb.model.state_dict()[k], v) for k, v in ref.items())
    # a detectron2 .pkl (e.g. the model zoo's ImageNet R-50.pkl): detectron2's name matching
    pkl = str(tmp_path / 'R-18.pkl')
    with open(pkl, 'wb') as f:
        pickle.dump(
            {'model': {k: v.numpy() for k, v in ref.items()}, '__author__': 'test', 'matching_heuristics': True}, f
        )
    bb = MODELS.build(dict(cfg, weights=pkl))
    assert all(torch.equal(bb.model.state_dict()[k], v) for k, v in ref.items())
    # weights of another network: an error naming what is missing, nothing silently random
    torch.save({k: v for k, v in ref.items() if not k.startswith('res3')}, str(tmp_path / 'part.pth'))
    with pytest.raises(RuntimeError, match=r'missing \[.res3'):
        MODELS.build(dict(cfg, weights=str(tmp_path / 'part.pth')))
    with pytest.raises(FileNotFoundError):
        MODELS.build(dict(cfg, weights=str(tmp_path / 'nothing.pth')))


def test_jbu_trainer_on_a_detectron2_backbone_and_its_checkpoint_in_featupbackbone(tmp_path):
    """FeatUpJBUTrainer(backbone=dict(type='Detectron2Backbone')) trains (frozen backbone); its checkpoint loads
    into FeatUpBackbone over the same ResNet, which then gives the trainer's upsampled features on d2 input."""
    MODELS = _mm()
    from featup_plugin.data.synthetic import generate_scene

    trainer = MODELS.build(
        dict(
            type='FeatUpJBUTrainer',
            feat_dim=128,
            num_stages=3,
            downsampler_kernel=8,
            n_views=2,
            max_pad=3,
            backbone=dict(type='Detectron2Backbone', opts=R18 + ['MODEL.RESNETS.OUT_FEATURES', ['res3']]),
        )
    )
    trainer.init_weights()
    rgb = torch.stack([torch.from_numpy(generate_scene(i, (32, 32))[0]).permute(2, 0, 1) for i in range(2)])
    x = torch.cat([_imagenet_normalised(im) for im in rgb])
    frozen = {k: v.clone() for k, v in trainer.backbone.state_dict().items()}
    params = [p for p in trainer.parameters() if p.requires_grad]
    assert {n.split('.')[0] for n, p in trainer.named_parameters() if p.requires_grad} == {
        'upsampler',
        'downsampler',
        'scale_net',
    }
    opt = torch.optim.NAdam(params, lr=1e-3)
    trainer.train()
    before = trainer.upsampler.state_dict()['fixup_proj.1.weight'].clone()
    for _ in range(2):
        losses = trainer(x, mode='loss')
        loss = sum(losses.values())
        assert torch.isfinite(loss)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert not trainer.backbone.training and not trainer.backbone.model.training
    assert all(p.grad is None and not p.requires_grad for p in trainer.backbone.parameters())
    assert all(torch.equal(trainer.backbone.state_dict()[k], v) for k, v in frozen.items())
    assert not torch.equal(before, trainer.upsampler.state_dict()['fixup_proj.1.weight'])

    path = str(tmp_path / 'iter_2.pth')
    torch.save({'state_dict': trainer.state_dict(), 'meta': {}}, path)
    d2 = trainer.backbone.cfg.clone()  # the same detectron2 config (ResNet, PIXEL_MEAN/STD, INPUT.FORMAT)
    d2.defrost()
    d2.merge_from_list(
        [
            'MODEL.BACKBONE.NAME',
            'FeatUpBackbone',
            'MODEL.FEATUP.IN_FEATURES',
            ['res3'],
            'MODEL.FEATUP.OUTPUT_STRIDE',
            1,
            'MODEL.FEATUP.WEIGHTS',
            path,
        ]
    )
    bb = build_backbone(d2)
    assert bb.upsampler('res3').num_stages == 3
    for k, v in trainer.upsampler.state_dict().items():
        assert torch.equal(bb.upsampler('res3').state_dict()[k], v), k
    bb.base.load_state_dict(trainer.backbone.model.state_dict())
    bb.eval()
    trainer.eval()
    d2_input = torch.stack(
        [
            (rgb_to_input(im, 'BGR') - torch.tensor(bb.pixel_mean).view(3, 1, 1))
            / torch.tensor(bb.pixel_std).view(3, 1, 1)
            for im in rgb
        ]
    )
    with torch.no_grad():
        expected = trainer.upsample(x)
        got = bb(d2_input)['res3']  # mode 'replace': the upsampled map keeps the name
    assert got.shape == expected.shape == (2, 128, 32, 32)
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)
