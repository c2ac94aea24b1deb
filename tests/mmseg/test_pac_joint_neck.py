"""PacJointUpsampler neck: FeatUpJBU's target options and sizes, the start as its bilinear twin, segmentor
train/val steps, slide inference, freezing and errors."""

import copy

import pytest
import torch

pytest.importorskip('mmseg', reason='MMSegmentation is not installed')

from mmengine.config import ConfigDict  # noqa: E402
from mmengine.optim import OptimWrapper  # noqa: E402
from mmseg.registry import MODELS  # noqa: E402

from featup_plugin.mmseg.necks import FeatUpJBU, PacJointUpsamplerNeck, ResizeNeck  # noqa: E402
from tests.mmseg.helpers import batch, data_preprocessor, fcn_head  # noqa: E402

SMALL = dict(channels=8, guidance_hidden=8, kernel_channels=4)


def segmentor(neck=None, test_cfg=None):
    return ConfigDict(
        type='GuidedEncoderDecoder',
        data_preprocessor=data_preprocessor(size_divisor=32),
        backbone=dict(
            type='ResNetV1c',
            depth=18,
            stem_channels=16,
            base_channels=16,
            num_stages=4,
            out_indices=(0, 1, 2, 3),
            norm_cfg=dict(type='BN'),
            contract_dilation=True,
            style='pytorch',
        ),
        neck=neck
        or dict(
            type='PacJointUpsampler',
            in_channels=[16, 32, 64, 128],
            in_index=3,
            out_size=None,
            output_stride=4,
            feature_strides=[4, 8, 16, 32],
            **SMALL,
        ),
        decode_head=fcn_head(128, in_index=3),
        train_cfg=dict(),
        test_cfg=test_cfg or dict(mode='whole'),
    )


@pytest.mark.parametrize(
    'kwargs, feat_shapes, image_hw',
    [
        (dict(in_channels=8, in_index=0), [(2, 8, 4, 6)], (64, 96)),
        (dict(in_channels=[4, 8], in_index=1, out_size=None, scale_factor=4), [(2, 4, 8, 8), (2, 8, 5, 7)], (40, 56)),
        (
            dict(in_channels=[4, 8], in_index=[0, 1], out_size=None, output_stride=4, feature_strides=[8, 16]),
            [(1, 4, 8, 12), (1, 8, 4, 6)],
            (60, 90),
        ),
        (
            dict(in_channels=[4, 8], in_index=-1, mode='append', feature_strides=[4, 16]),
            [(1, 4, 8, 8), (1, 8, 4, 4)],
            (64, 64),
        ),
    ],
)
def test_same_target_sizes_and_stages_as_featup_jbu(kwargs, feat_shapes, image_hw):
    feats = [torch.randn(*s) for s in feat_shapes]
    image = torch.randn(feat_shapes[0][0], 3, *image_hw)
    pac = PacJointUpsamplerNeck(**kwargs, **SMALL)
    jbu = FeatUpJBU(**kwargs)
    assert pac.num_stages == jbu.num_stages
    assert [tuple(o.shape) for o in pac(feats, guidance=image)] == [tuple(o.shape) for o in jbu(feats, guidance=image)]


def test_starts_as_its_bilinear_twin_and_learns_from_the_image():
    kw = dict(in_channels=[4, 8], in_index=[0, 1], out_size=None, output_stride=4, feature_strides=[8, 32])
    pac, twin = PacJointUpsamplerNeck(**kw, **SMALL), ResizeNeck(**kw)
    feats = [torch.randn(2, 4, 6, 8, requires_grad=True), torch.randn(2, 8, 2, 2, requires_grad=True)]
    image = torch.randn(2, 3, 48, 64)
    out = pac(feats, guidance=image)
    for a, b in zip(out, twin(feats, guidance=image)):
        torch.testing.assert_close(a, b)
    sum(o.square().mean() for o in out).backward()
    last = [up.final[-1].weight.grad for up in pac.upsamplers]
    assert all(g is not None and g.abs().sum() > 0 for g in last)
    with torch.no_grad():
        for up in pac.upsamplers:
            up.final[-1].weight.normal_()
    a = pac(feats, guidance=image)[1]
    assert (a - pac(feats, guidance=torch.randn_like(image))[1]).abs().max() > 1e-4
    paper = PacJointUpsamplerNeck(**kw, **SMALL, residual=False)  # the paper's network: no skip
    assert (paper(feats, guidance=image)[0] - out[0]).abs().max() > 1e-3


def test_train_step_val_step_and_every_neck_parameter_learns():
    torch.manual_seed(0)
    model = MODELS.build(segmentor())
    model.init_weights()
    assert isinstance(model.neck, PacJointUpsamplerNeck) and model.neck.num_stages == [3]
    data = batch(n=2, h=64, w=64)
    optim = OptimWrapper(torch.optim.SGD(model.parameters(), lr=0.1))

    def backward():
        model.zero_grad()
        proc = model.data_preprocessor(copy.deepcopy(data), True)
        sum(v for k, v in model(**proc, mode='loss').items() if 'loss' in k).backward()
        return {n: p.grad for n, p in model.neck.named_parameters()}

    # every neck parameter takes part (DDP); at the start only the zero-initialised last conv has a non-zero
    # gradient (the neck equals its bilinear twin), after one step all of them
    grads = backward()
    assert all(g is not None for g in grads.values())
    nonzero = {n for n, g in grads.items() if g.any()}
    assert {'upsamplers.0.final.2.weight', 'upsamplers.0.final.2.bias'} <= nonzero
    assert not any(n.startswith('upsamplers.0.target.') for n in nonzero)
    losses = model.train_step(copy.deepcopy(data), optim)
    assert torch.isfinite(losses['decode.loss_ce'])
    grads = backward()
    zero = [n for n, g in grads.items() if not g.any()]
    assert not zero, zero
    preds = model.val_step(copy.deepcopy(data))
    assert preds[0].pred_sem_seg.data.shape == (1, 64, 64)
    proc = model.data_preprocessor(copy.deepcopy(data), False)
    assert model(proc['inputs'], proc['data_samples'], mode='tensor').shape == (2, 4, 16, 16)  # stride 4


def test_slide_inference_uses_each_crop_as_guidance():
    model = MODELS.build(segmentor(test_cfg=dict(mode='slide', crop_size=(48, 48), stride=(32, 32))))
    model.eval()
    seen = []
    up = model.neck.upsamplers[0]
    orig = up.forward
    up.forward = lambda src, g, output_size=None: (
        seen.append((tuple(g.shape), output_size)),
        orig(src, g, output_size),
    )[1]
    preds = model.val_step(batch(n=1, h=80, w=80))
    assert preds[0].pred_sem_seg.data.shape == (1, 80, 80)
    assert len(seen) == 4 and all(s == ((1, 3, 48, 48), (12, 12)) for s in seen)


def test_freeze_and_projection():
    neck = PacJointUpsamplerNeck(8, out_size=None, scale_factor=4, freeze_upsampler=True, out_channels=5, **SMALL)
    neck.train()
    assert not neck.upsamplers.training and not any(p.requires_grad for p in neck.upsamplers.parameters())
    assert all(p.requires_grad for p in neck.projs.parameters())
    out = neck([torch.randn(1, 8, 4, 4)], guidance=torch.randn(1, 3, 32, 32))
    assert out[0].shape == (1, 5, 16, 16)


def test_errors():
    neck = PacJointUpsamplerNeck(8, out_size=None, scale_factor=4, **SMALL)
    with pytest.raises(RuntimeError, match=r"model = dict\(type='GuidedEncoderDecoder'\)"):
        neck([torch.randn(1, 8, 4, 4)])
    with pytest.raises(ValueError, match='8'):
        neck([torch.randn(1, 5, 4, 4)], guidance=torch.randn(1, 3, 16, 16))
    with pytest.raises(ValueError, match='needs 4 x2 stages but 2 were built'):
        PacJointUpsamplerNeck(8, num_stages=2, **SMALL)([torch.randn(1, 8, 4, 4)], guidance=torch.randn(1, 3, 64, 64))
    with pytest.raises(ValueError, match='exactly one'):
        PacJointUpsamplerNeck(8, scale_factor=2)
    with pytest.raises(ValueError, match='out of range'):
        PacJointUpsamplerNeck([4, 8], in_index=3)
    with pytest.raises(ValueError, match='feature_strides'):
        PacJointUpsamplerNeck([4, 8], feature_strides=[8])
    with pytest.raises(ValueError, match='out_channels'):
        PacJointUpsamplerNeck(8, out_channels=0)
    with pytest.raises(ValueError, match='kernel_size must be odd'):
        PacJointUpsamplerNeck(8, kernel_size=2)
