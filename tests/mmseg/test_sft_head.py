"""SFTGuidedHead (mmseg decode head) and the image reaching it through GuidedEncoderDecoder."""

import copy

import pytest
import torch

from tests.layers.test_sft import _randomise_sft

mmseg = pytest.importorskip('mmseg', reason='MMSegmentation is not installed')

from mmengine.config import ConfigDict  # noqa: E402
from mmengine.optim import OptimWrapper  # noqa: E402
from mmseg.registry import MODELS  # noqa: E402

from featup_plugin.mmseg.heads import SFTGuidedHead  # noqa: E402
from featup_plugin.upsamplers import IMAGENET_MEAN, IMAGENET_STD  # noqa: E402
from tests.mmseg.helpers import MEAN, batch, data_preprocessor, seg_samples  # noqa: E402  (registers the modules)

R18 = dict(
    type='ResNetV1c',
    depth=18,
    stem_channels=16,
    base_channels=8,
    num_stages=4,
    out_indices=(0, 1, 2, 3),
    norm_cfg=dict(type='BN'),
    contract_dilation=True,
    style='pytorch',
)  # tiny: 8, 16, 32, 64 channels


def head_cfg(**kw):
    cfg = dict(
        type='SFTGuidedHead',
        in_channels=64,
        in_index=3,
        feature_stride=32,
        output_stride=1,
        channels=8,
        cond_channels=8,
        num_classes=4,
        norm_cfg=dict(type='BN'),
        align_corners=False,
        loss_decode=dict(type='CrossEntropyLoss', loss_weight=1.0),
    )
    cfg.update(kw)
    return cfg


def model_cfg(head=None, neck=None, seg_type='GuidedEncoderDecoder', test_cfg=None, bgr_to_rgb=True):
    cfg = dict(
        type=seg_type,
        data_preprocessor=data_preprocessor(size_divisor=16, bgr_to_rgb=bgr_to_rgb),
        backbone=R18,
        decode_head=head or head_cfg(),
        train_cfg=dict(),
        test_cfg=test_cfg or dict(mode='whole'),
    )
    if neck is not None:
        cfg['neck'] = neck
    return ConfigDict(cfg)


@pytest.mark.parametrize(
    'kw, feat_hw, image_hw, want_hw, n_up',
    [
        (dict(feature_stride=32, output_stride=1), (3, 2), (70, 45), (70, 45), 5),  # non-square, not divisible
        (dict(feature_stride=16, output_stride=4), (4, 6), (64, 96), (16, 24), 2),
        (dict(feature_stride=16, output_stride=4), (4, 7), (61, 99), (16, 25), 2),  # ceil(image / stride)
        (dict(feature_stride=4, output_stride=1), (9, 5), (33, 17), (33, 17), 2),  # after a stride-4 neck
        (dict(feature_stride=14, output_stride=1), (4, 4), (56, 56), (56, 56), 4),  # ViT/14: last stage x1.75
        (dict(feature_stride=8, output_stride=8), (5, 3), (40, 24), (5, 3), 0),  # no upsampling stage
        (dict(feature_stride=32, output_stride=1), (1, 1), (8, 8), (8, 8), 5),  # tiny image: stages clamp
    ],
)
def test_head_output_shapes(kw, feat_hw, image_hw, want_hw, n_up):
    head = SFTGuidedHead(**{k: v for k, v in head_cfg(in_index=0, **kw).items() if k != 'type'})
    assert head.num_up == n_up and len(head.blocks) == n_up + 1 and len(head.condition_net.outs) == n_up + 1
    feats = [torch.randn(2, 64, *feat_hw)]
    out = head(feats, guidance=torch.randn(2, 3, *image_hw))
    assert out.shape == (2, 4) + want_hw
    sizes = head.stage_sizes(feat_hw, image_hw)
    assert sizes[0] == feat_hw and sizes[-1] == want_hw and len(sizes) == n_up + 1


def test_head_is_guidance_independent_at_init_and_not_after():
    head = MODELS.build(head_cfg(in_index=0))
    head.init_weights()
    head.eval()
    feats = [torch.randn(1, 64, 2, 3)]
    a, b = torch.randn(1, 3, 64, 96), torch.randn(1, 3, 64, 96)
    assert torch.equal(head(feats, guidance=a), head(feats, guidance=b))
    _randomise_sft(head, std=0.1)
    assert not torch.allclose(head(feats, guidance=a), head(feats, guidance=b))
    # a layer-wide init_cfg does not break the identity start
    head = MODELS.build(head_cfg(in_index=0, init_cfg=dict(type='Normal', std=0.5, layer='Conv2d')))
    head.init_weights()
    head.eval()
    assert torch.equal(head(feats, guidance=a), head(feats, guidance=b))


@pytest.mark.parametrize('condition', ['edges', 'image+edges'])
def test_edge_conditions(condition):
    head = MODELS.build(head_cfg(in_index=0, feature_stride=4, condition=condition))
    assert head.condition_net.signal == {'edges': 'edges', 'image+edges': 'raw+edges'}[condition]
    assert head.condition_net.trunk[0].in_channels == (3 if condition == 'edges' else 6)
    _randomise_sft(head, std=0.1)
    head.eval()
    feats = [torch.randn(1, 64, 4, 5)]
    img = torch.randn(1, 3, 16, 20)
    out = head(feats, guidance=img)
    assert out.shape == (1, 4, 16, 20)
    if condition == 'edges':  # only edges matter: a constant shift of the image changes nothing
        torch.testing.assert_close(head(feats, guidance=img + 0.7), out)


def test_head_bad_configs_and_inputs():
    with pytest.raises(ValueError, match='stage_channels needs 3'):
        SFTGuidedHead(64, 8, num_classes=4, feature_stride=16, output_stride=4, stage_channels=[8, 8])
    with pytest.raises(ValueError, match='must equal channels'):
        SFTGuidedHead(64, 8, num_classes=4, feature_stride=4, stage_channels=[16, 16, 16])
    with pytest.raises(ValueError, match='condition must be one of'):
        SFTGuidedHead(64, 8, num_classes=4, feature_stride=4, condition='depth')
    with pytest.raises(ValueError, match='condition_index'):
        SFTGuidedHead(64, 8, num_classes=4, feature_stride=4, condition='features')
    with pytest.raises(ValueError, match="only to condition='features'"):
        SFTGuidedHead(64, 8, num_classes=4, feature_stride=4, condition_index=1)
    with pytest.raises(ValueError, match='feature_stride'):
        SFTGuidedHead(64, 8, num_classes=4, feature_stride=0)
    with pytest.raises(ValueError, match='multiple_select'):
        SFTGuidedHead([64, 32], 8, num_classes=4, feature_stride=4, in_index=[0, 1], input_transform='multiple_select')
    head = SFTGuidedHead(64, 8, num_classes=4, feature_stride=8, in_index=0)
    with pytest.raises(RuntimeError, match=r"model = dict\(type='GuidedEncoderDecoder'\)"):
        head([torch.randn(1, 64, 4, 4)])
    with pytest.raises(ValueError, match='expects 64 input channels'):
        head([torch.randn(1, 32, 4, 4)], guidance=torch.randn(1, 3, 32, 32))
    with pytest.raises(ValueError, match='set feature_stride'):  # features at stride 32, head built for 8
        head([torch.randn(1, 64, 2, 2)], guidance=torch.randn(1, 3, 64, 64))
    with pytest.raises(ValueError, match=r'\[B, 3, H, W\]'):
        head([torch.randn(1, 64, 4, 4)], guidance=torch.randn(1, 1, 32, 32))
    feat_head = SFTGuidedHead(
        64,
        8,
        num_classes=4,
        feature_stride=8,
        in_index=0,
        condition='features',
        condition_index=1,
        condition_channels=5,
    )
    with pytest.raises(ValueError, match='condition_channels'):
        feat_head([torch.randn(1, 64, 4, 4), torch.randn(1, 6, 32, 32)], guidance=torch.randn(1, 3, 32, 32))
    with pytest.raises(ValueError, match='out of range'):
        feat_head([torch.randn(1, 64, 4, 4)], guidance=torch.randn(1, 3, 32, 32))


def test_plain_encoder_decoder_tells_the_line_to_add():
    model = MODELS.build(model_cfg(seg_type='EncoderDecoder'))
    data = model.data_preprocessor(batch(), True)
    with pytest.raises(RuntimeError, match='GuidedEncoderDecoder'):
        model(**data, mode='loss')


def test_head_gets_the_data_normalisation_and_recovers_rgb():
    for bgr_to_rgb in (True, False):
        model = MODELS.build(model_cfg(bgr_to_rgb=bgr_to_rgb))
        head = model.decode_head
        assert head.data_mean == pytest.approx(MEAN) and head.data_bgr == (not bgr_to_rgb)
        rgb = torch.rand(1, 3, 8, 8)
        loaded = (rgb.flip(1) * 255).round()  # mmcv loads BGR
        data = model.data_preprocessor(dict(inputs=[loaded[0].to(torch.uint8)], data_samples=None), False)
        want = (loaded.flip(1) / 255 - torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)) / torch.tensor(IMAGENET_STD).view(
            1, 3, 1, 1
        )
        torch.testing.assert_close(head.guidance_from_inputs(data['inputs']), want, rtol=1e-5, atol=1e-5)


def _seen_guidance(head):
    seen = []
    orig = head.forward

    def forward(inputs, guidance=None):
        seen.append(tuple(inputs.guidance.shape))
        return orig(inputs, guidance)

    head.forward = forward
    return seen


def test_segmentor_train_step_val_step_without_neck():
    torch.manual_seed(0)
    model = MODELS.build(model_cfg())
    model.init_weights()
    seen = _seen_guidance(model.decode_head)
    optim = OptimWrapper(torch.optim.SGD(model.parameters(), lr=0.05))
    data = batch(h=64, w=96)
    losses = model.train_step(copy.deepcopy(data), optim)
    assert 'decode.loss_ce' in losses and torch.isfinite(losses['decode.loss_ce'])
    assert seen == [(2, 3, 64, 96)]
    # after one step the SFT outputs have left zero: every head parameter, the condition network's included,
    # gets a gradient
    model.zero_grad()
    proc = model.data_preprocessor(copy.deepcopy(data), True)
    sum(v for k, v in model(**proc, mode='loss').items() if 'loss' in k).backward()
    no_grad = [n for n, p in model.decode_head.named_parameters() if p.grad is None or not p.grad.any()]
    assert not no_grad, no_grad
    preds = model.val_step(copy.deepcopy(data))
    assert len(preds) == 2 and preds[0].pred_sem_seg.data.shape == (1, 64, 96)
    proc = model.data_preprocessor(copy.deepcopy(data), False)
    logits = model(proc['inputs'], proc['data_samples'], mode='tensor')
    assert logits.shape == (2, 4, 64, 96)  # the head's output at the image resolution


def test_segmentor_with_featup_neck_and_feature_condition():
    """FeatUpJBU in append mode gives stride-4 features; the head decodes the stride-32 level and conditions on
    the upsampled features (condition='features'); output at stride 2."""
    neck = dict(
        type='FeatUpJBU',
        in_channels=[8, 16, 32, 64],
        in_index=3,
        out_size=None,
        output_stride=4,
        feature_strides=[4, 8, 16, 32],
        mode='append',
        key_dim=8,
    )
    head = head_cfg(
        in_index=3, feature_stride=32, output_stride=2, condition='features', condition_index=4, condition_channels=64
    )
    model = MODELS.build(model_cfg(head=head, neck=neck))
    model.init_weights()
    _randomise_sft(model.decode_head, std=0.1)
    optim = OptimWrapper(torch.optim.SGD(model.parameters(), lr=0.01))
    data = batch(h=48, w=80)
    model.train_step(copy.deepcopy(data), optim)
    model.zero_grad()
    proc = model.data_preprocessor(copy.deepcopy(data), True)
    sum(v for k, v in model(**proc, mode='loss').items() if 'loss' in k).backward()
    no_grad = [
        n
        for n, p in model.named_parameters()
        if (n.startswith('neck.') or 'condition_net' in n) and (p.grad is None or not p.grad.any())
    ]
    assert not no_grad, no_grad  # the neck's output reaches the loss through the condition network only
    proc = model.data_preprocessor(copy.deepcopy(data), False)
    assert model(proc['inputs'], proc['data_samples'], mode='tensor').shape == (2, 4, 24, 40)
    assert model.val_step(copy.deepcopy(data))[0].pred_sem_seg.data.shape == (1, 48, 80)


def test_slide_inference_guides_each_crop():
    model = MODELS.build(model_cfg(test_cfg=dict(mode='slide', crop_size=(48, 40), stride=(32, 32))))
    model.eval()
    seen = _seen_guidance(model.decode_head)
    preds = model.val_step(batch(n=1, h=80, w=72))
    assert preds[0].pred_sem_seg.data.shape == (1, 80, 72)
    assert len(seen) == 4 and all(s == (1, 3, 48, 40) for s in seen)


def test_test_time_augmentation():
    tta = MODELS.build(dict(type='SegTTAModel', module=model_cfg()))
    tta.eval()
    seen = _seen_guidance(tta.module.decode_head)
    plain, flipped = batch(n=1, h=32, w=48), batch(n=1, h=32, w=48)
    flipped['inputs'][0] = plain['inputs'][0].flip(-1)
    for s in flipped['data_samples']:
        s.set_metainfo(dict(flip=True, flip_direction='horizontal', img_path='a.png'))
    for s in plain['data_samples']:
        s.set_metainfo(dict(flip=False, flip_direction=None, img_path='a.png'))
    data = dict(
        inputs=[plain['inputs'], flipped['inputs']], data_samples=[plain['data_samples'], flipped['data_samples']]
    )
    preds = tta.test_step(data)
    assert len(preds) == 1 and preds[0].pred_sem_seg.data.shape == (1, 32, 48)
    assert len(seen) == 2 and all(s == (1, 3, 32, 48) for s in seen)


# -- condition='prior' / 'prior+image': the head's own coarse segmentation prior ----------------------------
def _capture_condition(head):
    """Records what the condition network gets (its guidance) and gives (one condition per scale)."""
    seen = {}
    head.condition_net.register_forward_hook(
        lambda m, args, out: seen.update(source=args[0], conds=[c.detach().clone() for c in out])
    )
    return seen


def _perturb_prior(head, std=1.0):
    with torch.no_grad():
        for p in head.prior_head.parameters():
            p.normal_(0, std)


def test_prior_condition_is_identity_at_init_and_conditions_on_the_prior_softmax():
    head = MODELS.build(head_cfg(in_index=0, feature_stride=8, condition='prior'))
    head.init_weights()
    head.eval()
    assert isinstance(head.prior_head, torch.nn.Conv2d) and head.prior_head.out_channels == 4
    assert head.condition_net.in_channels == 4 and head.prior_loss_weight == 0.4 and not head.prior_detach
    seen = _capture_condition(head)
    feats, img = [torch.randn(1, 64, 4, 5)], torch.randn(1, 3, 32, 40)
    out = head(feats, guidance=img)
    assert out.shape == (1, 4, 32, 40)
    prob = head.prior_head(feats[0]).softmax(1)
    torch.testing.assert_close(seen['source'], prob)  # the condition source: the prior's softmax at stride 8
    torch.testing.assert_close(seen['source'].sum(1), torch.ones(1, 4, 5))
    conds0 = seen['conds']
    _perturb_prior(head)
    out_b = head(feats, guidance=img)
    # identity SFT at init: the output depends neither on the prior nor on the image ...
    assert torch.equal(out_b, out) and torch.equal(head(feats, guidance=torch.randn_like(img)), out)
    # ... but the condition does depend on the prior branch
    assert all(c.shape == c0.shape for c, c0 in zip(seen['conds'], conds0))
    assert not any(torch.allclose(c, c0) for c, c0 in zip(seen['conds'], conds0))
    _randomise_sft(head, std=0.1)
    out_c = head(feats, guidance=img)
    _perturb_prior(head)
    assert not torch.allclose(head(feats, guidance=img), out_c)
    # seg logits only from predict; the pair only when asked
    seg, prior = head(feats, guidance=img, return_prior=True)
    assert seg.shape == (1, 4, 32, 40) and prior.shape == (1, 4, 4, 5)
    # a 3x3 ConvModule before the 1x1 when prior_channels is given
    head = MODELS.build(head_cfg(in_index=0, feature_stride=8, condition='prior', prior_channels=6))
    assert head.prior_head[0].conv.kernel_size == (3, 3) and head.prior_head[1].in_channels == 6


def test_prior_plus_image_condition():
    head = MODELS.build(head_cfg(in_index=0, feature_stride=8, condition='prior+image'))
    head.init_weights()
    head.eval()
    assert head.condition_net.in_channels == 4 + 3
    seen = _capture_condition(head)
    feats, img = [torch.randn(1, 64, 4, 5)], torch.randn(1, 3, 32, 40)
    out = head(feats, guidance=img)
    prob, rgb = seen['source']
    assert prob.shape == (1, 4, 4, 5) and torch.equal(rgb, img)
    assert torch.equal(head(feats, guidance=torch.randn_like(img)), out)  # identity at init
    _randomise_sft(head, std=0.1)
    out = head(feats, guidance=img)
    assert not torch.allclose(head(feats, guidance=torch.randn_like(img)), out)  # depends on the image
    _perturb_prior(head)
    assert not torch.allclose(head(feats, guidance=img), out)  # and on the prior


def _prior_head_grads(head, feats, img, samples):
    """Gradient of the prior branch's weight from the decode loss alone (the SFT path), from loss_prior alone,
    and from their sum (what training uses)."""
    from featup_plugin.mmseg.segmentors.guided_encoder_decoder import GuidedFeatures

    grads = {}
    for which in ('loss_ce', 'loss_prior', 'all'):
        head.zero_grad()
        losses = head.loss(GuidedFeatures(feats, guidance=img), samples, None)
        total = sum(v for k, v in losses.items() if k.startswith('loss') and (which == 'all' or k == which))
        total.backward()
        g = head.prior_head.weight.grad
        grads[which] = torch.zeros_like(head.prior_head.weight) if g is None else g.clone()
    return grads, losses


def test_prior_gradients_loss_and_detach():
    torch.manual_seed(0)
    head = MODELS.build(head_cfg(in_index=0, feature_stride=8, condition='prior', ignore_index=255))
    head.init_weights()
    _randomise_sft(head, std=0.1)  # the SFT path open, as after the first optimiser steps
    feats, img = [torch.randn(2, 64, 4, 5)], torch.randn(2, 3, 32, 40)
    samples = seg_samples(2, 32, 40, ignore=255)
    grads, losses = _prior_head_grads(head, feats, img, samples)
    assert set(losses) == {'loss_ce', 'acc_seg', 'loss_prior'}
    assert grads['loss_ce'].abs().sum() > 0 and grads['loss_prior'].abs().sum() > 0  # both paths reach it
    torch.testing.assert_close(grads['all'], grads['loss_ce'] + grads['loss_prior'])
    # loss_prior: 0.4 x cross-entropy of the resized prior logits over the labelled pixels only
    head.train()
    _, prior = head(feats, guidance=img, return_prior=True)
    label = torch.stack([s.gt_sem_seg.data for s in samples]).squeeze(1)
    want = 0.4 * torch.nn.functional.cross_entropy(
        torch.nn.functional.interpolate(prior, size=(32, 40), mode='bilinear', align_corners=False),
        label,
        ignore_index=255,
    )
    torch.testing.assert_close(losses['loss_prior'], want)
    # prior_detach: the same weights, the condition path is cut: the prior branch learns from loss_prior only
    detached = MODELS.build(
        head_cfg(in_index=0, feature_stride=8, condition='prior', ignore_index=255, prior_detach=True)
    )
    detached.load_state_dict(head.state_dict())
    dgrads, _ = _prior_head_grads(detached, feats, img, samples)
    assert not dgrads['loss_ce'].any()
    torch.testing.assert_close(dgrads['all'], grads['loss_prior'])
    # prior_loss_weight=0: no auxiliary loss
    none = MODELS.build(head_cfg(in_index=0, feature_stride=8, condition='prior', prior_loss_weight=0))
    from featup_plugin.mmseg.segmentors.guided_encoder_decoder import GuidedFeatures

    assert set(none.loss(GuidedFeatures(feats, guidance=img), samples, None)) == {'loss_ce', 'acc_seg'}


def test_prior_bad_configs():
    def build(**kw):
        return SFTGuidedHead(64, 8, num_classes=4, feature_stride=4, **kw)

    with pytest.raises(ValueError, match="condition_index / condition_channels apply only to condition='features'"):
        build(condition='prior', condition_index=1)
    for bad in (-0.1, '0.4', True, [0.4], float('nan')):
        with pytest.raises(ValueError, match='prior_loss_weight must be a number >= 0'):
            build(condition='prior', prior_loss_weight=bad)
    with pytest.raises(ValueError, match='prior_detach must be a bool'):
        build(condition='prior', prior_detach=1)
    with pytest.raises(ValueError, match='prior_detach=True with prior_loss_weight=0'):
        build(condition='prior', prior_detach=True, prior_loss_weight=0)
    with pytest.raises(ValueError, match='prior_channels must be None or a positive int'):
        build(condition='prior+image', prior_channels=0)
    for kw in (dict(prior_loss_weight=0.4), dict(prior_detach=False), dict(prior_channels=8)):
        with pytest.raises(ValueError, match=f"{next(iter(kw))} apply only to condition='prior'"):
            build(condition='image', **kw)
    with pytest.raises(ValueError, match='prior_loss_weight / prior_detach apply only'):
        build(condition='features', condition_index=1, condition_channels=3, prior_loss_weight=1.0, prior_detach=True)
    with pytest.raises(ValueError, match='out_channels=1'):  # binary sigmoid head: no softmax prior
        SFTGuidedHead(
            64,
            8,
            num_classes=2,
            out_channels=1,
            threshold=0.3,
            feature_stride=4,
            condition='prior',
            loss_decode=dict(type='CrossEntropyLoss', use_sigmoid=True),
        )
    with pytest.raises(ValueError, match="return_prior=True needs condition='prior'"):
        build(in_index=0)([torch.randn(1, 64, 4, 4)], guidance=torch.randn(1, 3, 16, 16), return_prior=True)


def test_segmentor_with_prior_condition_train_val_slide_tta():
    torch.manual_seed(0)
    model = MODELS.build(
        model_cfg(
            head=head_cfg(condition='prior+image', prior_channels=8),
            test_cfg=dict(mode='slide', crop_size=(48, 40), stride=(32, 32)),
        )
    )
    model.init_weights()
    head = model.decode_head
    calls = []
    orig = head.forward

    def forward(inputs, guidance=None, **kw):
        calls.append((tuple(inputs.guidance.shape), kw.get('return_prior', False)))
        return orig(inputs, guidance, **kw)

    head.forward = forward
    optim = OptimWrapper(torch.optim.SGD(model.parameters(), lr=0.05))
    data = batch(h=64, w=96)
    losses = model.train_step(copy.deepcopy(data), optim)
    assert {'decode.loss_ce', 'decode.loss_prior'} <= set(losses) and torch.isfinite(losses['decode.loss_prior'])
    assert calls == [((2, 3, 64, 96), True)]  # one forward pass gives both logits
    model.zero_grad()
    proc = model.data_preprocessor(copy.deepcopy(data), True)
    sum(v for k, v in model(**proc, mode='loss').items() if 'loss' in k).backward()
    no_grad = [n for n, p in head.named_parameters() if p.grad is None or not p.grad.any()]
    assert not no_grad, no_grad  # prior branch and condition network included
    calls.clear()
    preds = model.val_step(batch(n=1, h=80, w=72))  # slide: 4 crops, seg logits only
    assert preds[0].pred_sem_seg.data.shape == (1, 80, 72)
    assert calls == [((1, 3, 48, 40), False)] * 4
    tta = MODELS.build(dict(type='SegTTAModel', module=model_cfg(head=head_cfg(condition='prior'))))
    tta.eval()
    one = batch(n=1, h=32, w=48)
    for s in one['data_samples']:
        s.set_metainfo(dict(flip=False, flip_direction=None, img_path='a.png'))
    preds = tta.test_step(dict(inputs=[one['inputs']], data_samples=[one['data_samples']]))
    assert preds[0].pred_sem_seg.data.shape == (1, 32, 48)
