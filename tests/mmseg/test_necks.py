"""FeatUpJBU neck and GuidedEncoderDecoder with real MMSegmentation code."""

import copy

import pytest
import torch

mmseg = pytest.importorskip('mmseg', reason='MMSegmentation is not installed')

from mmengine.config import ConfigDict  # noqa: E402
from mmengine.optim import OptimWrapper  # noqa: E402
from mmseg.registry import MODELS  # noqa: E402

from featup_plugin.mmseg.necks import FeatUpJBU  # noqa: E402
from featup_plugin.upsamplers import IMAGENET_MEAN, IMAGENET_STD  # noqa: E402
from tests.mmseg.helpers import batch, data_preprocessor, fcn_head  # noqa: E402  (registers the modules)


def model_cfg(neck=None, seg_type='GuidedEncoderDecoder', test_cfg=None, num_classes=4):
    return ConfigDict(
        type=seg_type,
        data_preprocessor=data_preprocessor(size_divisor=32),
        backbone=dict(
            type='ResNetV1c',
            depth=18,
            num_stages=4,
            out_indices=(0, 1, 2, 3),
            norm_cfg=dict(type='BN'),
            contract_dilation=True,
            style='pytorch',
        ),
        neck=neck
        if neck is not None
        else dict(
            type='FeatUpJBU',
            in_channels=[64, 128, 256, 512],
            in_index=3,
            out_size=None,
            output_stride=4,
            feature_strides=[4, 8, 16, 32],
        ),
        decode_head=fcn_head(512, in_index=3, num_classes=num_classes),
        train_cfg=dict(),
        test_cfg=test_cfg or dict(mode='whole'),
    )


@pytest.mark.parametrize(
    'kwargs, feat_shapes, image_hw, want',
    [
        (dict(in_channels=8, in_index=0), [(2, 8, 4, 6)], (64, 96), [(2, 8, 64, 96)]),
        (
            dict(in_channels=[4, 8], in_index=1, out_size=None, scale_factor=4),
            [(2, 4, 8, 8), (2, 8, 5, 7)],
            (40, 56),
            [(2, 4, 8, 8), (2, 8, 20, 28)],
        ),
        (
            dict(in_channels=[4, 8], in_index=[0, 1], out_size=None, output_stride=4),
            [(1, 4, 8, 12), (1, 8, 4, 6)],
            (60, 90),
            [(1, 4, 15, 23), (1, 8, 15, 23)],
        ),
        (
            dict(in_channels=[4, 8], in_index=-1, mode='append'),
            [(1, 4, 8, 8), (1, 8, 4, 4)],
            (30, 50),
            [(1, 4, 8, 8), (1, 8, 4, 4), (1, 8, 30, 50)],
        ),
    ],
)
def test_neck_output_shapes(kwargs, feat_shapes, image_hw, want):
    neck = FeatUpJBU(**kwargs)
    feats = [torch.randn(*s) for s in feat_shapes]
    out = neck(feats, guidance=torch.randn(feat_shapes[0][0], 3, *image_hw))
    assert isinstance(out, tuple) and [tuple(o.shape) for o in out] == want


def test_stage_count_derivation():
    assert FeatUpJBU(8, out_size=None, scale_factor=16).num_stages == [4]
    assert FeatUpJBU(8, out_size=None, scale_factor=3).num_stages == [2]
    assert FeatUpJBU([4, 8], in_index=[0, 1], out_size=None, output_stride=4, feature_strides=[8, 32]).num_stages == [
        1,
        3,
    ]
    assert FeatUpJBU(8, feature_strides=16).num_stages == [4]  # to the image size
    assert FeatUpJBU(8, feature_strides=14).num_stages == [4]  # DINOv2: x14
    assert FeatUpJBU(8).num_stages == [4]
    assert FeatUpJBU(8, num_stages=2).upsamplers[0].num_stages == 2
    with pytest.raises(ValueError, match='feature_strides'):
        FeatUpJBU([4, 8], feature_strides=[8])


def test_neck_bad_configs_and_inputs():
    with pytest.raises(ValueError, match='exactly one'):
        FeatUpJBU(8, scale_factor=2)
    with pytest.raises(ValueError, match='out of range'):
        FeatUpJBU([4, 8], in_index=3)
    neck = FeatUpJBU(8)
    with pytest.raises(ValueError, match='8'):
        neck([torch.randn(1, 5, 4, 4)], guidance=torch.randn(1, 3, 16, 16))
    with pytest.raises(RuntimeError, match=r"model = dict\(type='GuidedEncoderDecoder'\)"):
        neck([torch.randn(1, 8, 4, 4)])


def test_plain_encoder_decoder_tells_the_line_to_add():
    model = MODELS.build(model_cfg(seg_type='EncoderDecoder'))
    data = model.data_preprocessor(batch(), True)
    with pytest.raises(RuntimeError, match='GuidedEncoderDecoder'):
        model(**data, mode='loss')


def test_guidance_is_imagenet_normalised_rgb():
    model = MODELS.build(model_cfg())
    rgb = torch.rand(1, 3, 8, 8)
    bgr_uint8 = (rgb.flip(1) * 255).round()
    data = model.data_preprocessor(dict(inputs=[bgr_uint8[0].to(torch.uint8)], data_samples=None), False)
    guidance = model.neck.guidance_from_inputs(data['inputs'])
    want = ((bgr_uint8.flip(1) / 255) - torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)) / torch.tensor(IMAGENET_STD).view(
        1, 3, 1, 1
    )
    torch.testing.assert_close(guidance, want, rtol=1e-5, atol=1e-5)
    # without bgr_to_rgb the batch stays BGR and the neck flips it
    neck = FeatUpJBU(8)
    neck.set_data_normalization([0, 0, 0], [255, 255, 255], bgr=True)
    torch.testing.assert_close(
        neck.guidance_from_inputs(bgr_uint8 / 255),
        ((rgb * 255).round() / 255 - torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1))
        / torch.tensor(IMAGENET_STD).view(1, 3, 1, 1),
        rtol=1e-5,
        atol=1e-5,
    )


def test_train_step_val_step_tensor_and_gradients():
    torch.manual_seed(0)
    model = MODELS.build(model_cfg())
    model.init_weights()
    optim = OptimWrapper(torch.optim.SGD(model.parameters(), lr=0.01))
    data = batch()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    losses = model.train_step(copy.deepcopy(data), optim)
    assert 'decode.loss_ce' in losses and torch.isfinite(losses['decode.loss_ce'])
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert any(n.startswith('backbone.') for n in changed) and any(n.startswith('neck.') for n in changed)
    # every parameter of the upsampler and the backbone receives a gradient
    model.zero_grad()
    proc = model.data_preprocessor(copy.deepcopy(data), True)
    sum(v for k, v in model(**proc, mode='loss').items() if 'loss' in k).backward()
    no_grad = [
        n
        for n, p in model.named_parameters()
        if (n.startswith('neck.') or n.startswith('backbone.layer4')) and (p.grad is None or not p.grad.any())
    ]
    assert not no_grad, no_grad
    preds = model.val_step(copy.deepcopy(data))
    assert len(preds) == 2 and preds[0].pred_sem_seg.data.shape == (1, 64, 64)
    proc = model.data_preprocessor(copy.deepcopy(data), False)
    logits = model(proc['inputs'], proc['data_samples'], mode='tensor')
    assert logits.shape == (2, 4, 16, 16)  # the head's output at the neck's stride 4


def test_freeze_upsampler():
    model = MODELS.build(
        model_cfg(
            neck=dict(
                type='FeatUpJBU',
                in_channels=[64, 128, 256, 512],
                in_index=3,
                out_size=None,
                output_stride=8,
                freeze_upsampler=True,
            )
        )
    )
    model.train()
    assert not model.neck.upsamplers.training
    assert all(not p.requires_grad for p in model.neck.parameters())
    losses = model.train_step(
        batch(), OptimWrapper(torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.01))
    )
    assert torch.isfinite(losses['decode.loss_ce'])


def test_slide_inference_uses_each_crop_as_guidance():
    model = MODELS.build(model_cfg(test_cfg=dict(mode='slide', crop_size=(48, 48), stride=(32, 32))))
    model.eval()
    seen = []
    orig = model.neck.forward
    model.neck.forward = lambda feats, guidance=None: (seen.append(tuple(guidance.shape)), orig(feats, guidance))[1]
    preds = model.val_step(batch(n=1, h=80, w=80))
    assert preds[0].pred_sem_seg.data.shape == (1, 80, 80)
    assert len(seen) == 4 and all(s == (1, 3, 48, 48) for s in seen)


def test_init_cfg_loads_upsampler_weights(tmp_path):
    src = FeatUpJBU(8)
    with torch.no_grad():
        for p in src.parameters():
            p.add_(torch.randn_like(p))
    path = tmp_path / 'featup_neck.pth'
    torch.save(dict(state_dict=src.state_dict()), path)
    dst = FeatUpJBU(8, init_cfg=dict(type='Pretrained', checkpoint=str(path)))
    dst.init_weights()
    for (n, a), (_, b) in zip(src.state_dict().items(), dst.state_dict().items()):
        torch.testing.assert_close(a, b, msg=n)


def _randomised(module):
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn_like(p))
    return module


def test_init_cfg_accepts_a_bare_stack_and_a_segmentor_checkpoint(tmp_path):
    from featup_plugin.upsamplers import JBUStack

    stack = _randomised(JBUStack(8, num_stages=2))
    path = tmp_path / 'stack.pth'
    torch.save(
        stack.state_dict(), path
    )  # what tools/model_converters/convert_featup_checkpoint.py writes without --prefix
    neck = FeatUpJBU(8, scale_factor=4, out_size=None, init_cfg=dict(type='Pretrained', checkpoint=str(path)))
    neck.init_weights()
    for k, v in stack.state_dict().items():
        torch.testing.assert_close(neck.upsamplers[0].state_dict()[k], v, msg=k)

    src = _randomised(FeatUpJBU([4, 8], in_index=[0, 1], scale_factor=4, out_size=None))
    path = tmp_path / 'segmentor.pth'
    torch.save(dict(meta={}, state_dict={'neck.' + k: v for k, v in src.state_dict().items()}), path)
    dst = FeatUpJBU(
        [4, 8], in_index=[0, 1], scale_factor=4, out_size=None, init_cfg=dict(type='Pretrained', checkpoint=str(path))
    )
    dst.init_weights()
    for k, v in src.state_dict().items():
        torch.testing.assert_close(dst.state_dict()[k], v, msg=k)


def test_init_cfg_refuses_partial_or_mismatched_weights(tmp_path):
    from featup_plugin.upsamplers import JBUStack

    path = tmp_path / 'stack.pth'
    torch.save(JBUStack(8, num_stages=2).state_dict(), path)
    neck = FeatUpJBU(8, scale_factor=16, out_size=None, init_cfg=dict(type='Pretrained', checkpoint=str(path)))
    with pytest.raises(KeyError, match=r'missing .*upsamplers\.0\.up3'):
        neck.init_weights()  # 4 stages wanted, the file has 2
    neck = FeatUpJBU(16, scale_factor=4, out_size=None, init_cfg=dict(type='Pretrained', checkpoint=str(path)))
    with pytest.raises(ValueError, match='has shape'):
        neck.init_weights()  # 16 channels wanted, the file has 8
    torch.save(dict(state_dict={'backbone.conv.weight': torch.zeros(1)}), path)
    neck = FeatUpJBU(8, init_cfg=dict(type='Pretrained', checkpoint=str(path)))
    with pytest.raises(KeyError, match='holds no upsampler weights'):
        neck.init_weights()
    two = FeatUpJBU([4, 8], in_index=[0, 1], scale_factor=4, out_size=None)
    with pytest.raises(ValueError, match='one bare JBUStack'):
        two.load_upsampler_weights(JBUStack(4, num_stages=2).state_dict())


def test_a_stack_with_more_stages_loads_its_first_stages(monkeypatch):
    import featup_plugin.mmseg.necks.featup_jbu as neck_module
    from featup_plugin.upsamplers import JBUStack

    logged = []
    monkeypatch.setattr(neck_module, 'print_log', lambda msg, **kw: logged.append(msg))
    torch.manual_seed(0)
    big = JBUStack(8, num_stages=4)  # FeatUp's x16 stack, used to stride 4 of a stride-16 backbone: 2 stages
    with torch.no_grad():
        for p in big.parameters():
            p.add_(torch.randn_like(p))
    neck = FeatUpJBU(8, out_size=None, output_stride=4, feature_strides=16)
    assert neck.num_stages == [2]
    neck.load_upsampler_weights({'upsampler.' + k: v for k, v in big.state_dict().items()})
    own = neck.upsamplers[0].state_dict()
    assert all(torch.equal(own[k], v) for k, v in big.state_dict().items() if k in own)
    assert not any(k.startswith(('up3.', 'up4.')) for k in own)
    assert len(logged) == 1 and "stages ['up3', 'up4'] beyond the 2" in logged[0]


@pytest.mark.parametrize('neck_type', ['FeatUpJBU', 'ResizeNeck'])
def test_out_channels_projects_each_upsampled_level(neck_type):
    torch.manual_seed(0)
    kw = dict(
        type=neck_type, in_channels=[4, 8], in_index=[0, 1], out_size=None, output_stride=4, feature_strides=[8, 16]
    )
    feats = [torch.randn(2, 4, 6, 8, requires_grad=True), torch.randn(2, 8, 3, 4, requires_grad=True)]
    image = torch.randn(2, 3, 48, 64)
    plain = MODELS.build(dict(kw))
    neck = MODELS.build(dict(kw, out_channels=[16, 5], norm_cfg=dict(type='BN'), act_cfg=dict(type='ReLU')))
    neck.load_state_dict(plain.state_dict(), strict=False)  # same upsampler, plus the projections
    out = neck(feats, guidance=image)
    assert [tuple(o.shape) for o in out] == [(2, 16, 12, 16), (2, 5, 12, 16)]
    assert all((o >= 0).all() for o in out)  # the ReLU of act_cfg is applied
    # the projection reads the upsampled level: a plain 1x1 conv over the un-projected output
    one = MODELS.build(dict(kw, out_channels=3, mode='append'))
    one.load_state_dict(plain.state_dict(), strict=False)
    plain.eval(), one.eval()  # the JBU stack's fixup has dropout
    ref = plain(feats, guidance=image)
    got = one(feats, guidance=image)
    assert [tuple(o.shape) for o in got] == [(2, 4, 6, 8), (2, 8, 3, 4), (2, 3, 12, 16), (2, 3, 12, 16)]
    for proj, r, g in zip(one.projs, ref, got[2:]):
        torch.testing.assert_close(g, torch.nn.functional.conv2d(r, proj.conv.weight, proj.conv.bias))
    # gradients reach the projection, the upsampler and the inputs
    sum(o.square().mean() for o in out).backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in neck.parameters() if p.requires_grad)
    assert all(f.grad is not None and f.grad.abs().sum() > 0 for f in feats)
    for bad in (0, [16], [16, 'a'], True):
        with pytest.raises(ValueError, match='out_channels'):
            MODELS.build(dict(kw, out_channels=bad))


def test_out_channels_in_a_segmentor_with_frozen_upsampler(tmp_path):
    neck = dict(
        type='FeatUpJBU',
        in_channels=[64, 128, 256, 512],
        in_index=3,
        out_size=None,
        output_stride=8,
        feature_strides=[4, 8, 16, 32],
        out_channels=32,
        freeze_upsampler=True,
    )
    cfg = model_cfg(neck=neck)
    cfg.decode_head.in_channels = 32
    model = MODELS.build(cfg)
    model.init_weights()
    model.train()
    assert all(p.requires_grad for p in model.neck.projs.parameters())  # the new projection still learns
    assert not any(p.requires_grad for p in model.neck.upsamplers.parameters())
    before = {n: p.detach().clone() for n, p in model.neck.named_parameters()}
    losses = model.train_step(
        batch(), OptimWrapper(torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1))
    )
    assert torch.isfinite(losses['decode.loss_ce'])
    changed = {n for n, p in model.neck.named_parameters() if not torch.equal(p, before[n])}
    assert changed and all(n.startswith('projs.') for n in changed)
    # upsampler weights from a checkpoint still load into a neck that has a projection
    torch.save({'state_dict': {'neck.' + k: v for k, v in model.neck.state_dict().items()}}, tmp_path / 'seg.pth')
    other = FeatUpJBU(
        [64, 128, 256, 512],
        in_index=3,
        out_size=None,
        output_stride=8,
        feature_strides=[4, 8, 16, 32],
        out_channels=32,
        init_cfg=dict(type='Pretrained', checkpoint=str(tmp_path / 'seg.pth')),
    )
    other.init_weights()
    for k, v in model.neck.upsamplers.state_dict().items():
        torch.testing.assert_close(other.upsamplers.state_dict()[k], v)
