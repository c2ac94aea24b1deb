"""A user's path: a stock mmseg config plus ``custom_imports``, built by mmengine's Runner in a fresh interpreter.

mmengine reads the config (importing featup_plugin, not mmseg), then the Runner's ``default_scope='mmseg'``
imports mmseg, and the plugin must be registered by then.
"""

import subprocess
import sys

import pytest

pytest.importorskip('mmseg', reason='MMSegmentation is not installed')

CONFIG = """
_base_ = ['mmseg::_base_/models/fcn_r50-d8.py', 'mmseg::_base_/default_runtime.py']
custom_imports = dict(imports=['featup_plugin'], allow_failed_imports=False)
norm_cfg = dict(type='BN', requires_grad=True)
model = dict(
    type='GuidedEncoderDecoder',
    data_preprocessor=dict(size=(64, 64)),
    backbone=dict(depth=18, norm_cfg=norm_cfg),
    neck=dict(type='FeatUpJBU', in_channels=[64, 128, 256, 512], in_index=3, feature_strides=[4, 8, 8, 8],
              out_size=None, output_stride=4),
    decode_head=dict(in_channels=512, channels=16, num_convs=1, num_classes=3, norm_cfg=norm_cfg),
    auxiliary_head=dict(in_channels=256, channels=16, num_classes=3, norm_cfg=norm_cfg))
"""

SCRIPT = """
import sys, torch
from mmengine.config import Config
from mmengine.runner import Runner
cfg = Config.fromfile(sys.argv[1])
assert 'featup_plugin' in sys.modules, 'custom_imports did not import featup_plugin'
assert 'mmseg' not in sys.modules, 'reading the config imported mmseg'
cfg.work_dir = sys.argv[2]
runner = Runner.from_cfg(cfg)
model = runner.model
assert type(model).__name__ == 'GuidedEncoderDecoder' and type(model.neck).__name__ == 'FeatUpJBU', model
from mmengine.structures import PixelData
from mmseg.structures import SegDataSample
samples = []
for _ in range(2):
    s = SegDataSample()
    s.gt_sem_seg = PixelData(data=torch.randint(0, 3, (1, 64, 64)))
    s.set_metainfo(dict(img_shape=(64, 64), ori_shape=(64, 64), pad_shape=(64, 64)))
    samples.append(s)
data = dict(inputs=[torch.randint(0, 256, (3, 64, 64), dtype=torch.uint8) for _ in range(2)], data_samples=samples)
from mmengine.optim import OptimWrapper
losses = model.train_step(data, OptimWrapper(torch.optim.SGD(model.parameters(), lr=0.01)))
assert torch.isfinite(losses['decode.loss_ce']), losses
print('ok')
"""


@pytest.mark.slow
def test_stock_mmseg_config_with_custom_imports_builds_through_the_runner(tmp_path):
    cfg = tmp_path / 'fcn_r18_featup.py'
    cfg.write_text(CONFIG)
    res = subprocess.run(
        [sys.executable, '-c', SCRIPT, str(cfg), str(tmp_path / 'work')],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=str(tmp_path),
    )
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-4000:]
    assert res.stdout.strip().endswith('ok')
