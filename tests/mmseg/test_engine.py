"""featup_plugin.mmseg.engine: the CPU distributed backend."""

import pytest
import torch

pytest.importorskip('mmseg', reason='MMSegmentation is not installed')

from featup_plugin.mmseg.engine import use_gloo_without_cuda  # noqa: E402


def test_gloo_only_for_distributed_runs_without_cuda(monkeypatch):
    cfg = dict(launcher='none', env_cfg=dict(dist_cfg=dict(backend='nccl')))
    assert not use_gloo_without_cuda(cfg) and cfg['env_cfg']['dist_cfg']['backend'] == 'nccl'
    if torch.cuda.is_available():
        cfg = dict(launcher='pytorch', env_cfg=dict(dist_cfg=dict(backend='nccl')))
        assert not use_gloo_without_cuda(cfg) and cfg['env_cfg']['dist_cfg']['backend'] == 'nccl'
    else:  # outside torchrun the pytorch launcher names what is missing (tests/mmseg/test_tools.py runs torchrun)
        cfg = dict(launcher='pytorch', env_cfg=dict(dist_cfg=dict(backend='nccl')))
        for k in ('RANK', 'WORLD_SIZE', 'MASTER_ADDR', 'MASTER_PORT'):
            monkeypatch.delenv(k, raising=False)
        with pytest.raises(RuntimeError, match='torchrun'):
            use_gloo_without_cuda(cfg)
        assert cfg['env_cfg']['dist_cfg']['backend'] == 'gloo'


def test_build_runner_cfg(tmp_path, monkeypatch):
    from featup_plugin.mmseg.engine import build_runner_cfg

    path = tmp_path / 'my_cfg.py'
    path.write_text("model = dict(type='X')\noptim_wrapper = dict(type='OptimWrapper', optimizer=dict(type='SGD'))\n")
    cfg = build_runner_cfg(str(path), cfg_options={'model.depth': 18})
    assert cfg.work_dir.endswith('work_dirs/my_cfg') and cfg.model.depth == 18 and cfg.launcher == 'none'
    assert 'resume' not in cfg and cfg.optim_wrapper.type == 'OptimWrapper'
    from featup_plugin.mmseg import engine

    if not engine.amp_device_available():
        with pytest.raises(RuntimeError, match='AmpOptimWrapper needs a GPU'):
            build_runner_cfg(str(path), amp=True)
        monkeypatch.setattr(engine, 'amp_device_available', lambda: True)  # the config as on a GPU machine
    cfg = build_runner_cfg(str(path), work_dir=str(tmp_path / 'w'), amp=True, resume='auto')
    assert cfg.work_dir == str(tmp_path / 'w') and cfg.optim_wrapper.type == 'AmpOptimWrapper'
    assert cfg.optim_wrapper.loss_scale == 'dynamic' and cfg.resume is True and cfg.load_from is None
    cfg = build_runner_cfg(str(path), resume='ckpt.pth')
    assert cfg.resume is True and cfg.load_from == 'ckpt.pth'
    path.write_text("optim_wrapper = dict(type='MyWrapper')\n")
    with pytest.raises(ValueError, match='--amp needs optim_wrapper.type'):
        build_runner_cfg(str(path), amp=True)
