"""torch.compile of the FeatUpJBU neck (fullgraph, eval and train mode: values and gradients equal eager) and of the
CPU main job through mmengine's ``compile=True``."""

import math
import os

import pytest
import torch

pytest.importorskip('mmseg', reason='MMSegmentation is not installed')

from mmengine.config import Config  # noqa: E402
from mmengine.runner import Runner  # noqa: E402

from featup_plugin.mmseg.necks import FeatUpJBU  # noqa: E402
from featup_plugin.ops import _backend  # noqa: E402
from tests import ROOT  # noqa: E402
from tests.mmseg.test_configs import _on_generated_data  # noqa: E402

MAIN_JOB = os.path.join(ROOT, 'configs', 'synthetic', 'fcn-cb_r18_featup_1xb8-600i_featup-synth-128x128.py')

needs_ops = pytest.mark.skipif(
    os.environ.get('FEATUP_OPS', 'auto') == 'reference' or _backend.get_ext() is None,
    reason='no compiled extension: nothing registered to compile through',
)


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def _neck():
    torch.manual_seed(0)
    neck = FeatUpJBU([4, 8], in_index=1, out_size=None, scale_factor=4, out_channels=6, channel_norm=True)
    neck.init_weights()
    with torch.no_grad():
        for p in neck.parameters():
            p.add_(0.05 * torch.randn_like(p))
    for m in neck.modules():  # train mode without random masks, so compiled and eager see the same function
        if isinstance(m, (torch.nn.Dropout, torch.nn.Dropout2d)):
            m.p = 0.0
    return neck


def _grads(module):
    return {n: p.grad.clone() for n, p in module.named_parameters() if p.grad is not None}


@needs_ops
@pytest.mark.parametrize('train', [False, True])
def test_compile_fullgraph_neck_equals_eager(train):
    neck = _neck().train(train)
    feats = [torch.randn(2, 4, 8, 10), torch.randn(2, 8, 4, 5)]
    image = torch.randn(2, 3, 64, 80)
    compiled = torch.compile(neck, fullgraph=True, backend='aot_eager')
    leaves = [f.clone().requires_grad_() for f in feats]
    leaves_c = [f.clone().requires_grad_() for f in feats]
    want, got = neck(leaves, image), compiled(leaves_c, image)
    assert len(got) == len(want) == 2 and got[1].shape == (2, 6, 16, 20)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    go = torch.randn_like(want[1])
    neck.zero_grad()
    want[1].backward(go)
    g_eager = _grads(neck)
    neck.zero_grad()
    got[1].backward(go)
    g_comp = _grads(neck)
    assert any(n.startswith('upsamplers.') for n in g_eager) and g_eager.keys() == g_comp.keys()
    for n in g_eager:
        torch.testing.assert_close(g_comp[n], g_eager[n], rtol=1e-4, atol=1e-5, msg=n)
    torch.testing.assert_close(leaves_c[1].grad, leaves[1].grad, rtol=1e-4, atol=1e-5)


@needs_ops
def test_compiled_neck_graph_holds_the_registered_ops():
    graphs = []

    def backend(gm, example_inputs):
        graphs.append(gm)
        return gm

    neck = _neck().eval()
    torch.compile(neck, fullgraph=True, backend=backend)(
        [torch.randn(1, 4, 8, 10), torch.randn(1, 8, 4, 5)], torch.randn(1, 3, 64, 80)
    )
    assert len(graphs) == 1 and 'torch.ops.featup.adaptive_conv' in graphs[0].code


@pytest.mark.slow
def test_main_job_trains_with_compile_true(synth_root, tmp_path):
    # mmengine's compile=True: torch.compile (inductor) of the model's train_step; a few iterations on CPU.
    cfg = _on_generated_data(Config.fromfile(MAIN_JOB), synth_root, str(tmp_path))
    cfg.compile = True
    cfg.train_cfg.max_iters = 3
    runner = Runner.from_cfg(cfg)
    before = {n: p.detach().clone() for n, p in runner.model.neck.named_parameters()}
    runner.train()
    assert runner.iter == 3
    loss = runner.message_hub.get_scalar('train/loss').current()
    assert math.isfinite(loss) and loss > 0
    assert hasattr(runner.model.train_step, '_torchdynamo_orig_callable')  # mmengine really compiled it
    changed = [n for n, p in runner.model.neck.named_parameters() if not torch.equal(p, before[n])]
    assert changed and any('up1' in n for n in changed)
