"""Package-level contracts."""
import os
import subprocess
import sys

from conftest import ROOT

BLOCKER = '''
import sys, importlib.abc
BLOCKED = ("mmseg", "mmcv", "mmengine", "mmdet", "detectron2", "timm")
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ImportError(f"{name} is blocked for this test")
sys.meta_path.insert(0, Block())
'''


def test_core_imports_and_runs_without_any_framework():
    code = BLOCKER + '''
import torch, featup_plugin
from featup_plugin.upsamplers import JBUStack
out = JBUStack(4)(torch.randn(1, 4, 3, 3), torch.rand(1, 3, 24, 24))
assert out.shape == (1, 4, 48, 48)
from featup_plugin.layers import ResBlockSFT, SFTConditionNet
cond = SFTConditionNet(3, 4)(torch.rand(1, 3, 24, 24), [(6, 6)])[0]
assert ResBlockSFT(5, 4)(torch.randn(1, 5, 6, 6), cond).shape == (1, 5, 6, 6)
from featup_plugin.training import apply_jitter, sample_jitter, multiview_loss
from featup_plugin.training.implicit import fit_implicit
from featup_plugin.training.checkpoint import extract_upsampler_state_dict
from featup_plugin.datasets.images import list_images, load_image
from featup_plugin.upsamplers import AttentionDownsampler
assert AttentionDownsampler(4, 4)(apply_jitter(out, sample_jitter((48, 48))), (12, 12)).shape == (1, 4, 12, 12)
try:
    import mmseg
except ImportError:
    print("ok")
'''
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get('PYTHONPATH', ''))
    res = subprocess.run([sys.executable, '-c', code], env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    assert res.stdout.strip().endswith('ok')
    imported = [m for m in ('mmseg', 'mmcv', 'mmengine', 'detectron2') if f"'{m}'" in res.stderr]
    assert not imported


def test_version_and_public_api():
    import featup_plugin
    assert featup_plugin.__version__.count('.') == 2
    assert {'adaptive_conv', 'local_correlation', 'backend_name'} <= set(featup_plugin.ops.__all__)
    assert {'JBUStack', 'JBULearnedRange', 'ChannelNorm'} <= set(featup_plugin.upsamplers.__all__)
