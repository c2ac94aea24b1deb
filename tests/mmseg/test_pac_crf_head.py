"""PacCRFHead: a PAC-CRF on any decode head's logits in mmseg (whole and slide inference, train/val steps)."""

import copy

import pytest
import torch

pytest.importorskip('mmseg', reason='MMSegmentation is not installed')

from mmengine.config import ConfigDict  # noqa: E402
from mmengine.optim import OptimWrapper  # noqa: E402
from mmseg.registry import MODELS  # noqa: E402

from featup_plugin.mmseg.heads import PacCRFHead  # noqa: E402
from tests.mmseg.helpers import batch, data_preprocessor, fcn_head  # noqa: E402

XY = [dict(features='xy', kernel_size=3, theta_xy=2.0, weight=0.3)]


def backbone():
    return dict(
        type='ResNetV1c',
        depth=18,
        stem_channels=16,
        base_channels=16,
        num_stages=4,
        out_indices=(0, 1, 2, 3),
        norm_cfg=dict(type='BN'),
        contract_dilation=True,
        style='pytorch',
    )


def segmentor(head=None, seg_type='GuidedEncoderDecoder', test_cfg=None, **crf):
    inner = fcn_head(128, in_index=3)
    return ConfigDict(
        type=seg_type,
        data_preprocessor=data_preprocessor(size_divisor=32),
        backbone=backbone(),
        decode_head=head if head is not None else dict(type='PacCRFHead', head=inner, **crf),
        train_cfg=dict(),
        test_cfg=test_cfg or dict(mode='whole'),
    )


def test_train_step_val_step_and_gradients_reach_the_crf():
    torch.manual_seed(0)
    model = MODELS.build(segmentor(num_iters=3))
    model.init_weights()
    head = model.decode_head
    assert isinstance(head, PacCRFHead) and model.num_classes == 4 and model.out_channels == 4
    torch.testing.assert_close(head.crf.compatibility(), 1 - torch.eye(4))  # init_weights keeps the Potts start
    data = batch(n=2, h=64, w=64)
    proc = model.data_preprocessor(copy.deepcopy(data), True)
    losses = model(**proc, mode='loss')
    losses['decode.loss_ce'].backward()
    crf_grads = {n: p.grad for n, p in head.crf.named_parameters()}
    assert set(crf_grads) == {'compat', 'kernels.0.weight', 'kernels.1.weight'}
    assert all(g is not None and g.abs().sum() > 0 for g in crf_grads.values())
    assert head.head.conv_seg.weight.grad.abs().sum() > 0  # the wrapped head trains through the CRF
    model.zero_grad()
    before = head.crf.compat.detach().clone()
    out = model.train_step(copy.deepcopy(data), OptimWrapper(torch.optim.SGD(model.parameters(), lr=0.1)))
    assert torch.isfinite(out['decode.loss_ce']) and not torch.equal(head.crf.compat, before)
    preds = model.val_step(copy.deepcopy(data))
    assert len(preds) == 2 and preds[0].pred_sem_seg.data.shape == (1, 64, 64)
    assert preds[0].seg_logits.data.shape == (4, 64, 64)
    proc = model.data_preprocessor(copy.deepcopy(data), False)
    assert model(proc['inputs'], proc['data_samples'], mode='tensor').shape == (2, 4, 64, 64)  # at the image size


def test_zero_pairwise_weight_predicts_what_the_wrapped_head_predicts():
    torch.manual_seed(0)
    kernels = [dict(features='xyrgb', weight=0.0), dict(features='xy', dilation=2, weight=0.0)]
    model = MODELS.build(segmentor(num_iters=4, kernels=kernels))
    model.init_weights()
    plain = MODELS.build(segmentor(head=fcn_head(128, in_index=3)))
    plain.init_weights()
    # a plain segmentor's checkpoint loads into the wrapped head (its keys go under decode_head.head.)
    missing, unexpected = model.load_state_dict(plain.state_dict(), strict=False)
    assert not unexpected and sorted(missing) == sorted(
        f'decode_head.crf.{n}' for n, _ in model.decode_head.crf.named_parameters()
    )
    for k, v in plain.state_dict().items():
        torch.testing.assert_close(model.state_dict()[k.replace('decode_head.', 'decode_head.head.')], v)
    model.eval(), plain.eval()
    data = batch(n=2, h=64, w=64)
    a, b = model.val_step(copy.deepcopy(data)), plain.val_step(copy.deepcopy(data))
    for pa, pb in zip(a, b):
        torch.testing.assert_close(pa.seg_logits.data, pb.seg_logits.data, rtol=1e-6, atol=1e-6)
    with torch.no_grad():  # and a non-zero weight does change them
        model.decode_head.crf.kernels[0].weight.fill_(0.5)
    c = model.val_step(copy.deepcopy(data))
    assert (c[0].seg_logits.data - a[0].seg_logits.data).abs().max() > 1e-3


def test_slide_inference_runs_the_crf_on_each_crop():
    model = MODELS.build(segmentor(test_cfg=dict(mode='slide', crop_size=(48, 48), stride=(32, 32)), num_iters=2))
    model.eval()
    seen = []
    orig = model.decode_head.crf.forward
    model.decode_head.crf.forward = lambda logits, rgb=None: (
        seen.append((logits.shape, rgb.shape)),
        orig(logits, rgb),
    )[1]
    preds = model.val_step(batch(n=1, h=80, w=80))
    assert preds[0].pred_sem_seg.data.shape == (1, 80, 80)
    assert len(seen) == 4 and all(s == ((1, 4, 48, 48), (1, 3, 48, 48)) for s in seen)


def test_resolution_logits_and_guidance_free_kernels():
    head = PacCRFHead(fcn_head(8), num_iters=2, resolution='logits')
    feats = [torch.randn(2, 8, 8, 8)]
    image = torch.randn(2, 3, 64, 64)
    assert head(feats, guidance=image).shape == (2, 4, 8, 8)
    assert PacCRFHead(fcn_head(8), num_iters=2)(feats, guidance=image).shape == (2, 4, 64, 64)
    with pytest.raises(RuntimeError, match=r"model = dict\(type='GuidedEncoderDecoder'\)"):
        head(feats)
    # 'xy' kernels at the logits' resolution need no image: a plain EncoderDecoder works
    model = MODELS.build(segmentor(seg_type='EncoderDecoder', num_iters=2, kernels=XY, resolution='logits'))
    losses = model.train_step(batch(n=1, h=64, w=64), OptimWrapper(torch.optim.SGD(model.parameters(), lr=0.01)))
    assert torch.isfinite(losses['decode.loss_ce'])
    model = MODELS.build(segmentor(seg_type='EncoderDecoder', num_iters=2))
    with pytest.raises(RuntimeError, match='GuidedEncoderDecoder'):
        model.train_step(batch(n=1, h=64, w=64), OptimWrapper(torch.optim.SGD(model.parameters(), lr=0.01)))


def test_a_guided_head_inside_gets_the_guidance_and_the_normalisation():
    sft = dict(
        type='SFTGuidedHead',
        in_channels=128,
        in_index=3,
        channels=8,
        feature_stride=32,
        output_stride=4,
        stage_channels=[16, 8, 8, 8],
        cond_channels=8,
        num_classes=4,
        norm_cfg=dict(type='BN'),
    )
    model = MODELS.build(segmentor(head=dict(type='PacCRFHead', head=sft, num_iters=2)))
    assert model.decode_head.head.data_mean == model.decode_head.data_mean is not None
    losses = model.train_step(batch(n=2, h=64, w=64), OptimWrapper(torch.optim.SGD(model.parameters(), lr=0.01)))
    assert torch.isfinite(losses['decode.loss_ce'])


def test_config_errors():
    with pytest.raises(ValueError, match='resolution must be one of'):
        PacCRFHead(fcn_head(8), resolution='full')
    with pytest.raises(TypeError, match='config dict'):
        PacCRFHead('FCNHead')
    binary = dict(fcn_head(8, num_classes=2), loss_decode=dict(type='CrossEntropyLoss', use_sigmoid=True))
    binary['out_channels'] = 1
    with pytest.raises(ValueError, match='num_classes >= 2'):
        PacCRFHead(binary)
    prior = dict(type='SFTGuidedHead', in_channels=8, channels=8, feature_stride=8, num_classes=4, condition='prior')
    with pytest.raises(ValueError, match='loss_prior'):
        PacCRFHead(prior)
    with pytest.raises(ValueError, match='update must be one of'):
        PacCRFHead(fcn_head(8), update='damped')
    with pytest.raises(ValueError, match='unknown keys'):
        PacCRFHead(fcn_head(8), kernels=[dict(features='xy', sigma=1)])
