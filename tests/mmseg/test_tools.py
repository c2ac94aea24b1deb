"""tools/train.py and tools/test.py as a user runs them (subprocesses), including a 2-process gloo launch."""

import glob
import os
import socket
import subprocess
import sys

import pytest

pytest.importorskip('mmseg', reason='MMSegmentation is not installed')

from tests import ROOT  # noqa: E402

CONFIG = os.path.join(ROOT, 'configs', 'synthetic', 'fcn-cb_r18_featup_1xb8-600i_featup-synth-128x128.py')


def _small_run_options(data_root, iters):
    return [
        '--cfg-options',
        f'synthetic_data.root={data_root}',
        'synthetic_data.num_train=4',
        'synthetic_data.num_val=2',
        'synthetic_data.size=64',
        f'train_dataloader.dataset.data_root={data_root}',
        f'val_dataloader.dataset.data_root={data_root}',
        f'test_dataloader.dataset.data_root={data_root}',
        'train_dataloader.batch_size=2',
        'train_dataloader.num_workers=0',
        'train_dataloader.persistent_workers=False',
        'val_dataloader.num_workers=0',
        'val_dataloader.persistent_workers=False',
        'test_dataloader.num_workers=0',
        'test_dataloader.persistent_workers=False',
        f'train_cfg.max_iters={iters}',
        f'train_cfg.val_interval={iters}',
        f'default_hooks.checkpoint.interval={iters}',
    ]


def _run(args, cwd, timeout=600):
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get('PYTHONPATH', ''), OMP_NUM_THREADS='1')
    res = subprocess.run([sys.executable] + args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    out = res.stdout + res.stderr
    assert res.returncode == 0, out[-4000:]
    return out


@pytest.mark.slow
def test_train_generates_data_trains_evaluates_then_test_tool(tmp_path):
    data_root, work = str(tmp_path / 'data'), str(tmp_path / 'work')
    assert not os.path.exists(data_root)
    out = _run(
        [os.path.join(ROOT, 'tools', 'train.py'), CONFIG, '--work-dir', work] + _small_run_options(data_root, 2),
        cwd=str(tmp_path),
    )
    assert os.path.isfile(os.path.join(data_root, 'meta.json'))  # generated because it was absent
    assert 'mIoU' in out and 'thin_iou' in out and 'bF' in out
    ckpt = os.path.join(work, 'iter_2.pth')
    assert os.path.isfile(ckpt)

    # --resume continues from the last checkpoint of the work dir
    out = _run(
        [os.path.join(ROOT, 'tools', 'train.py'), CONFIG, '--work-dir', work, '--resume']
        + _small_run_options(data_root, 3),
        cwd=str(tmp_path),
    )
    assert 'resumed epoch: 0, iter: 2' in out and 'Saving checkpoint at 3 iterations' in out
    ckpt = os.path.join(work, 'iter_3.pth')
    assert os.path.isfile(ckpt)

    pred_dir = str(tmp_path / 'pred')
    out = _run(
        [os.path.join(ROOT, 'tools', 'test.py'), CONFIG, ckpt, '--work-dir', work, '--out', pred_dir]
        + _small_run_options(data_root, 2),
        cwd=str(tmp_path),
    )
    assert 'mIoU' in out
    assert len(glob.glob(os.path.join(pred_dir, '*.png'))) == 2

    out = _run(
        [os.path.join(ROOT, 'tools', 'test.py'), CONFIG, ckpt, '--work-dir', work, '--tta']
        + _small_run_options(data_root, 2),
        cwd=str(tmp_path),
    )
    assert 'mIoU' in out


def _free_port():
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_process_gloo_training(tmp_path):
    data_root, work = str(tmp_path / 'data'), str(tmp_path / 'work')
    out = _run(
        [
            '-m',
            'torch.distributed.run',
            '--nproc_per_node=2',
            f'--master_port={_free_port()}',
            os.path.join(ROOT, 'tools', 'train.py'),
            CONFIG,
            '--launcher',
            'pytorch',
            '--work-dir',
            work,
        ]
        + _small_run_options(data_root, 1),
        cwd=str(tmp_path),
    )
    assert 'distributed backend is gloo' in out
    assert 'Distributed training: True' in out
    assert os.path.isfile(os.path.join(work, 'iter_1.pth'))
    assert 'mIoU' in out


def test_dump_configs_tool_finds_a_changed_config(tmp_path):
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        'dump_configs', os.path.join(ROOT, 'tools', 'analysis_tools', 'dump_configs.py')
    )
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    (tmp_path / 'configs').mkdir()
    cfg = tmp_path / 'configs' / 'a.py'
    cfg.write_text("model = dict(type='X', depth=18)\n")
    (tmp_path / 'configs' / 'broken.py').write_text('raise RuntimeError("not a config")\n')
    first = tool.dump(str(tmp_path))
    assert first['configs/a.py']['dict'] == {'model': {'type': 'X', 'depth': 18}}
    assert 'not a config' in first['configs/broken.py']['error']
    assert tool.compare(first, tool.dump(str(tmp_path))) == []
    cfg.write_text("model = dict(type='X', depth=34)\n")
    assert tool.compare(first, tool.dump(str(tmp_path))) == ['differs: configs/a.py']


def test_class_weights_tool(tmp_path):
    import importlib.util

    import numpy as np
    from PIL import Image

    spec = importlib.util.spec_from_file_location(
        'class_weights', os.path.join(ROOT, 'tools', 'analysis_tools', 'class_weights.py')
    )
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    # counts 60 / 30 / 10 / 0: frequencies 0.6 / 0.3 / 0.1, median 0.3
    w = tool.class_weights([60, 30, 10, 0], 'median')
    raw = np.array([0.5, 1.0, 3.0, 0.0])
    assert np.allclose(w, raw / (np.array([0.6, 0.3, 0.1, 0]) * raw).sum())
    for method in tool.METHODS:
        w = tool.class_weights([60, 30, 10, 0], method)
        assert np.dot([0.6, 0.3, 0.1, 0], w) == pytest.approx(1.0) and w[3] == 0
        assert w[0] < w[1] < w[2]
    assert np.allclose(tool.class_weights([1, 4], 'invsqrt'), np.array([1, 0.5]) / (0.2 * 1 + 0.8 * 0.5))
    with pytest.raises(ValueError, match='method'):
        tool.class_weights([1, 2], 'log')
    # from label maps, 255 ignored
    (tmp_path / 'ann').mkdir()
    Image.fromarray(np.array([[0, 0, 1, 255]], np.uint8), 'L').save(tmp_path / 'ann' / 'a.png')
    Image.fromarray(np.array([[2, 0, 0, 0]], np.uint8), 'L').save(tmp_path / 'ann' / 'b.png')
    assert tool.pixel_counts(str(tmp_path / 'ann'), 3).tolist() == [5, 1, 1]
