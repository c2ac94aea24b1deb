"""Autocast of the mmseg pieces (issue 18 §1): the main-job segmentor (FeatUpJBU neck), an SFT-guided segmentor
and the JBU trainer compute their losses and gradients under ``torch.autocast`` (bfloat16 / float16 on CPU; CUDA
where a GPU exists) close to float32, and a train_step updates the weights."""

import copy
import os

import pytest
import torch

pytest.importorskip('mmseg', reason='MMSegmentation is not installed')

from mmengine.config import Config  # noqa: E402
from mmengine.optim import OptimWrapper  # noqa: E402
from mmseg.registry import MODELS  # noqa: E402

from tests import ROOT  # noqa: E402
from tests.layers.test_sft import _randomise_sft  # noqa: E402
from tests.mmseg.helpers import batch  # noqa: E402  (registers the modules)
from tests.mmseg.test_configs import _drop_downloads  # noqa: E402
from tests.mmseg.test_sft_head import model_cfg as sft_model_cfg  # noqa: E402
from tests.ops.test_autocast import CASES, IDS  # noqa: E402
from tests.training.test_multiview import _generated_batch, _TinyBackbone  # noqa: E402

MAIN_JOB = os.path.join(ROOT, 'configs', 'synthetic', 'fcn-cb_r18_featup_1xb8-600i_featup-synth-128x128.py')
LOSS_RTOL = {torch.bfloat16: 5e-2, torch.float16: 1e-2}


def _main_job_model(dev):
    cfg = Config.fromfile(MAIN_JOB)
    _drop_downloads(cfg.model)
    torch.manual_seed(0)
    model = MODELS.build(cfg.model)
    model.init_weights()
    return model.to(dev)


def _sft_model(dev):
    torch.manual_seed(0)
    model = MODELS.build(sft_model_cfg())
    model.init_weights()
    _randomise_sft(model.decode_head)  # away from the identity at init, so the condition net gets gradients
    return model.to(dev)


def _losses(model, data, dev, dtype):
    with torch.autocast(dev, dtype=dtype, enabled=dtype is not None):
        losses = model(**data, mode='loss')
    return {k: v for k, v in losses.items() if 'loss' in k}


@pytest.mark.parametrize('dev,dtype', CASES, ids=IDS)
@pytest.mark.parametrize('build', [_main_job_model, _sft_model], ids=['main-job', 'sft-head'])
def test_segmentor_loss_gradients_and_train_step_under_autocast(build, dev, dtype):
    model = build(dev).eval()  # eval: BN statistics fixed, so float32 and autocast see the same function
    torch.manual_seed(1)
    classes = model.decode_head.num_classes
    data = model.data_preprocessor(batch(2, 32, 32, classes=classes), True)
    data = {k: v.to(dev) if torch.is_tensor(v) else v for k, v in data.items()}
    want = _losses(model, data, dev, None)
    got = _losses(model, data, dev, dtype)
    assert want.keys() == got.keys() and 'decode.loss_ce' in got
    for k in want:
        assert torch.isfinite(got[k]), k
        torch.testing.assert_close(got[k].float(), want[k], rtol=LOSS_RTOL[dtype], atol=1e-3, msg=k)
    sum(got.values()).backward()
    grads = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
    assert any(n.startswith(('neck', 'decode_head.condition_net')) for n in grads)
    assert all(torch.isfinite(g).all() for g in grads.values())
    # a train_step under autocast (mmengine's OptimWrapper; AmpOptimWrapper is its GPU form) updates the model
    model.train()
    before = copy.deepcopy(model.state_dict())
    with torch.autocast(dev, dtype=dtype):
        optim = OptimWrapper(torch.optim.SGD(model.parameters(), 0.1))
        out = model.train_step(batch(2, 32, 32, classes=classes), optim)
    assert all(torch.isfinite(v) for v in out.values())
    changed = [k for k, v in model.state_dict().items() if v.is_floating_point() and not torch.equal(v, before[k])]
    assert any(k.startswith('neck') or k.startswith('decode_head.condition_net') for k in changed)


@pytest.mark.parametrize('dev,dtype', CASES, ids=IDS)
def test_jbu_trainer_under_autocast(dev, dtype):
    def build():
        torch.manual_seed(0)
        trainer = MODELS.build(
            dict(type='FeatUpJBUTrainer', backbone=_TinyBackbone(), feat_dim=8, num_stages=2, downsampler_kernel=4)
        )
        return trainer.to(dev)

    img = _generated_batch(2, 32)[:, :, :16, :16].to(dev)
    want = build()(img, mode='loss')
    trainer = build()
    with torch.autocast(dev, dtype=dtype):
        got = trainer(img, mode='loss')
    assert want.keys() == got.keys() and {'loss_rec', 'loss_crf'} <= set(got)
    for k in want:  # same seed, same views: float32 and autocast losses agree
        torch.testing.assert_close(got[k].float(), want[k], rtol=LOSS_RTOL[dtype] * 2, atol=1e-4, msg=k)
    sum(got.values()).backward()
    grads = [p.grad for p in trainer.upsampler.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads) and any(g.abs().sum() > 0 for g in grads)
