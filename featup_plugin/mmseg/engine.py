"""mmengine glue for the tools: the checkpoint loader and launch-time adjustments of a config."""

from __future__ import annotations

import datetime
import os

import torch

from ..checkpoint.io import load_mmengine_checkpoint

__all__ = ['use_gloo_without_cuda', 'use_mmengine_checkpoint_loader', 'build_runner_cfg', 'amp_device_available']


def use_mmengine_checkpoint_loader() -> None:
    """Make mmengine load local checkpoints (``load_from``, ``resume``, ``init_cfg``) with
    :func:`featup_plugin.checkpoint.load_mmengine_checkpoint` (torch's safe loader, then mmengine's own objects)."""
    from mmengine.runner.checkpoint import CheckpointLoader

    CheckpointLoader.register_scheme(prefixes='', loader=load_mmengine_checkpoint, force=True)


def use_gloo_without_cuda(cfg) -> bool:
    """Make a distributed launch (``cfg.launcher != 'none'``) work on a machine without CUDA.

    NCCL needs GPUs, so the backend becomes gloo (said on stdout). For the ``pytorch`` launcher (torchrun) the
    process group is also initialised here, because mmengine's own initialisation pins a CUDA device first and
    fails without one; mmengine's Runner then finds the group ready and uses it. DDP gets ``device_ids=None``
    (CPU modules). Returns whether it changed
    anything.
    """
    launcher = cfg.get('launcher', 'none')
    if launcher == 'none' or torch.cuda.is_available():
        return False
    env = cfg.setdefault('env_cfg', {})
    dist_cfg = env.setdefault('dist_cfg', {})
    if dist_cfg.get('backend', 'nccl') == 'nccl':
        dist_cfg['backend'] = 'gloo'
        print('featup_plugin: no CUDA device, so the distributed backend is gloo instead of nccl', flush=True)
    # DDP on CPU modules takes no device_ids; mmengine passes [LOCAL_RANK] unless the wrapper config says.
    wrapper = cfg.get('model_wrapper_cfg', None)
    if wrapper is None:
        cfg['model_wrapper_cfg'] = dict(
            type='MMDistributedDataParallel',
            device_ids=None,
            broadcast_buffers=False,
            find_unused_parameters=cfg.get('find_unused_parameters', False),
        )
    else:
        wrapper.setdefault('device_ids', None)
    if launcher == 'pytorch' and not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        missing = [k for k in ('RANK', 'WORLD_SIZE', 'MASTER_ADDR', 'MASTER_PORT') if k not in os.environ]
        if missing:
            raise RuntimeError(
                f"--launcher pytorch expects torchrun's environment; {', '.join(missing)} "
                'not set (start with: torchrun --nproc_per_node=N tools/train.py CONFIG '
                '--launcher pytorch)'
            )
        kwargs = {k: v for k, v in dist_cfg.items() if k != 'backend'}
        if 'timeout' in kwargs and not isinstance(kwargs['timeout'], datetime.timedelta):
            kwargs['timeout'] = datetime.timedelta(seconds=int(kwargs['timeout']))
        torch.distributed.init_process_group(backend=dist_cfg['backend'], **kwargs)
    return True


def amp_device_available() -> bool:
    """Whether mmengine's ``AmpOptimWrapper`` can run here (it asserts a CUDA, NPU, MLU or MUSA device)."""
    from mmengine import device

    checks = ('is_cuda_available', 'is_npu_available', 'is_mlu_available', 'is_musa_available')
    return any(getattr(device, name, lambda: False)() for name in checks)


def build_runner_cfg(
    config: str, work_dir=None, cfg_options=None, launcher: str = 'none', amp: bool = False, resume=None
):
    """The mmengine config the tools (train, test, PAC hot-swap) hand to the Runner: ``config`` with
    ``cfg_options`` merged, ``work_dir`` (default ``./work_dirs/<config name>``), ``AmpOptimWrapper`` if ``amp``,
    gloo on a machine without CUDA (:func:`use_gloo_without_cuda`), and ``resume``: ``None``, ``'auto'`` (the work
    dir's latest checkpoint) or a checkpoint path."""
    import os.path as osp

    from mmengine.config import Config

    cfg = Config.fromfile(config)
    cfg.launcher = launcher
    if cfg_options is not None:
        cfg.merge_from_dict(cfg_options)
    if work_dir is not None:
        cfg.work_dir = work_dir
    elif cfg.get('work_dir', None) is None:
        cfg.work_dir = osp.join('./work_dirs', osp.splitext(osp.basename(config))[0])
    if amp:
        wrapper = cfg.optim_wrapper.get('type', 'OptimWrapper')
        if wrapper not in ('OptimWrapper', 'AmpOptimWrapper'):
            raise ValueError(f'--amp needs optim_wrapper.type OptimWrapper or AmpOptimWrapper, got {wrapper}')
        if not amp_device_available():
            raise RuntimeError(
                "--amp: mmengine's AmpOptimWrapper needs a GPU (CUDA, NPU, MLU or MUSA) and none is visible on "
                'this machine; train without --amp here. (The featup modules themselves run under '
                "torch.autocast('cpu', dtype=torch.bfloat16): docs/ops.md#autocast)"
            )
        cfg.optim_wrapper.type = 'AmpOptimWrapper'
        cfg.optim_wrapper.setdefault('loss_scale', 'dynamic')
    use_gloo_without_cuda(cfg)
    if resume == 'auto':
        cfg.resume, cfg.load_from = True, None
    elif resume is not None:
        cfg.resume, cfg.load_from = True, resume
    return cfg
