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
