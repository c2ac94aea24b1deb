"""Package-level contracts."""

import pytest


@pytest.mark.slow
def test_core_imports_and_runs_without_any_framework(run_without_frameworks):
    res = run_without_frameworks("""
import torch, featup_plugin
from featup_plugin.upsamplers import JBUStack
out = JBUStack(4)(torch.randn(1, 4, 3, 3), torch.rand(1, 3, 24, 24))
assert out.shape == (1, 4, 48, 48)
from featup_plugin.layers import ResBlockSFT, SFTConditionNet
cond = SFTConditionNet(3, 4)(torch.rand(1, 3, 24, 24), [(6, 6)])[0]
assert ResBlockSFT(5, 4)(torch.randn(1, 5, 6, 6), cond).shape == (1, 5, 6, 6)
from featup_plugin.training import apply_jitter, sample_jitter, multiview_loss
from featup_plugin.training.implicit import fit_implicit
from featup_plugin.checkpoint import extract_upsampler_state_dict
from featup_plugin.data.images import list_images, load_image
from featup_plugin.upsamplers import AttentionDownsampler
assert AttentionDownsampler(4, 4)(apply_jitter(out, sample_jitter((48, 48))), (12, 12)).shape == (1, 4, 12, 12)
try:
    import mmseg
except ImportError:
    print("ok")
""")
    assert res.stdout.strip().endswith('ok')
    imported = [m for m in ('mmseg', 'mmcv', 'mmengine', 'detectron2') if f"'{m}'" in res.stderr]
    assert not imported


def test_version_and_public_api():
    import featup_plugin

    assert featup_plugin.__version__.count('.') == 2
    assert {'adaptive_conv', 'local_correlation', 'backend_name'} <= set(featup_plugin.ops.__all__)
    assert {'JBUStack', 'JBULearnedRange', 'ChannelNorm'} <= set(featup_plugin.upsamplers.__all__)
