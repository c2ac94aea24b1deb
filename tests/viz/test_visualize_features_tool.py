"""tools/analysis_tools/visualize_features.py (in-process, small images, no implicit fitting, no download)."""

import importlib.util
import os

import numpy as np
import pytest
from PIL import Image

pytest.importorskip('timm', reason='timm is not installed')

from tests import ROOT  # noqa: E402
from tests.helpers import one_thread  # noqa: E402, F401
from tests.hub.test_hub import featup_file  # noqa: E402

pytestmark = pytest.mark.usefixtures('one_thread')

TOOL = os.path.join(ROOT, 'tools', 'analysis_tools', 'visualize_features.py')


@pytest.fixture(scope='module')
def tool():
    spec = importlib.util.spec_from_file_location('_visualize_features', TOOL)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def images(tmp_path):
    rng = np.random.default_rng(0)
    paths = []
    for i in range(2):
        arr = np.zeros((64, 64, 3), np.uint8)
        arr[:, 32:] = rng.integers(0, 255, 3)  # two regions
        paths.append(str(tmp_path / f'im{i}.png'))
        Image.fromarray(arr).save(paths[-1])
    return paths


def test_timm_vit_grid_and_featup_figure(tool, images, tmp_path, capsys):
    pytest.importorskip('matplotlib')
    out, fig = tmp_path / 'grid.png', tmp_path / 'fig.png'
    args = images + ['--out', str(out), '--model-kwargs', 'depth=1', '--implicit-steps', '0', '--size', '64']
    assert tool.main(args + ['--cell', '40', '--figure', str(fig)]) == 0
    grid = Image.open(out)
    assert grid.size == (4 * 40, 18 + 2 * 40)  # image | low-res | bilinear | JBU, two rows
    assert fig.stat().st_size > 1000 and 'plot_feats' in capsys.readouterr().out


def test_featup_backbone_with_an_official_checkpoint(tool, images, tmp_path, capsys):
    ckpt = tmp_path / 'dino16_jbu_stack_cocostuff.ckpt'
    featup_file(ckpt, pickled_hparams=True)
    out = tmp_path / 'grid.png'
    args = images[:1] + ['--out', str(out), '--featup', 'dino16', '--jbu', str(ckpt), '--trust']
    assert tool.main(args + ['--implicit-steps', '0', '--size', '64', '--cell', '32']) == 0
    printed = capsys.readouterr().out
    assert 'FeatUp checkpoint' in printed and 'random init (pretrained=False)' in printed
    assert Image.open(out).size == (4 * 32, 18 + 32)
    with pytest.raises(SystemExit, match='--model-kwargs applies to --model'):
        tool.main(args + ['--model-kwargs', 'depth=1'])
