#!/usr/bin/env python3
"""Train a segmentor from an mmseg 1.x config (mmengine Runner), with the featup_plugin modules registered.

    python3 tools/train.py CONFIG [--work-dir DIR] [--resume [CKPT]] [--amp] [--cfg-options k=v ...]
    torchrun --nproc_per_node=N tools/train.py CONFIG --launcher pytorch       # distributed
    srun ... python3 tools/train.py CONFIG --launcher slurm                    # slurm

Datasets of type ``FeatUpSyntheticDataset`` are generated first if their folder is missing (see
``tools/dataset_converters/generate_dataset.py``), so a config on the generated data runs on a fresh machine as is.
"""

from __future__ import annotations

import argparse
import os

from mmengine.config import DictAction


def parse_args(argv=None):
    p = argparse.ArgumentParser(description='Train a segmentor (mmseg config) with featup_plugin registered')
    p.add_argument('config', help='config file path')
    p.add_argument('--work-dir', help='where logs and checkpoints go (default: ./work_dirs/<config name>)')
    p.add_argument(
        '--resume',
        nargs='?',
        type=str,
        const='auto',
        help='resume from CKPT, or from the latest checkpoint in the work dir if no path is given',
    )
    p.add_argument('--amp', action='store_true', help='automatic mixed precision (AmpOptimWrapper)')
    p.add_argument(
        '--cfg-options',
        nargs='+',
        action=DictAction,
        default=None,
        help='override config entries, e.g. train_cfg.max_iters=100 model.neck.radius=2',
    )
    p.add_argument(
        '--launcher',
        choices=['none', 'pytorch', 'slurm', 'mpi'],
        default='none',
        help='job launcher (pytorch = torchrun)',
    )
    p.add_argument('--local_rank', '--local-rank', type=int, default=0)
    args = p.parse_args(argv)
    if 'LOCAL_RANK' not in os.environ:
        os.environ['LOCAL_RANK'] = str(args.local_rank)
    return args


def build_cfg(args):
    from featup_plugin.mmseg.engine import build_runner_cfg

    return build_runner_cfg(args.config, args.work_dir, args.cfg_options, args.launcher, args.amp, args.resume)


def main(argv=None):
    args = parse_args(argv)
    from mmengine.runner import Runner
    from mmseg.utils import register_all_modules

    import featup_plugin  # noqa: F401  registers the modules even if the config lacks custom_imports
    from featup_plugin.data.prepare import prepare_generated_datasets
    from featup_plugin.mmseg.engine import use_mmengine_checkpoint_loader

    register_all_modules(init_default_scope=False)
    use_mmengine_checkpoint_loader()  # torch >= 2.6 refuses mmengine's checkpoints by default
    try:
        cfg = build_cfg(args)
    except (ValueError, RuntimeError) as e:  # a bad flag / config combination: the message, not a traceback
        raise SystemExit(f'train.py: {e}') from e
    prepare_generated_datasets(cfg)
    runner = Runner.from_cfg(cfg) if 'runner_type' not in cfg else _build_custom_runner(cfg)
    runner.train()


def _build_custom_runner(cfg):
    from mmengine.registry import RUNNERS

    return RUNNERS.build(cfg)


if __name__ == '__main__':
    main()
