#!/usr/bin/env python3
"""Evaluate a trained segmentor (mmseg 1.x config + checkpoint) with featup_plugin registered.

python3 tools/test.py CONFIG CHECKPOINT [--work-dir DIR] [--out DIR] [--show-dir DIR] [--tta]
torchrun --nproc_per_node=N tools/test.py CONFIG CHECKPOINT --launcher pytorch
"""

from __future__ import annotations

import argparse
import os

from mmengine.config import DictAction


def parse_args(argv=None):
    p = argparse.ArgumentParser(description='Test a segmentor (mmseg config) with featup_plugin registered')
    p.add_argument('config', help='config file path')
    p.add_argument('checkpoint', help='checkpoint file')
    p.add_argument('--work-dir', help='where the evaluation log goes')
    p.add_argument('--out', help='save the predicted label maps (PNG) into this folder')
    p.add_argument('--show-dir', help='save drawn predictions into this folder')
    p.add_argument('--tta', action='store_true', help="test-time augmentation (the config's tta_pipeline)")
    p.add_argument(
        '--cfg-options',
        nargs='+',
        action=DictAction,
        default=None,
        help='override config entries, e.g. test_dataloader.dataset.data_root=...',
    )
    p.add_argument('--launcher', choices=['none', 'pytorch', 'slurm', 'mpi'], default='none')
    p.add_argument('--local_rank', '--local-rank', type=int, default=0)
    args = p.parse_args(argv)
    if 'LOCAL_RANK' not in os.environ:
        os.environ['LOCAL_RANK'] = str(args.local_rank)
    return args


def build_cfg(args):
    from featup_plugin.mmseg.engine import build_runner_cfg

    cfg = build_runner_cfg(args.config, args.work_dir, args.cfg_options, args.launcher)
    cfg.load_from = args.checkpoint
    if args.show_dir:
        hook = cfg.default_hooks.get('visualization')
        if hook is None:
            raise ValueError('--show-dir needs default_hooks.visualization (SegVisualizationHook) in the config')
        hook.draw = True
        hook.interval = 1
        cfg.visualizer.save_dir = args.show_dir
    if args.out is not None:
        cfg.test_evaluator = cfg.test_evaluator if isinstance(cfg.test_evaluator, list) else [cfg.test_evaluator]
        for ev in cfg.test_evaluator:
            if ev.get('type') in ('IoUMetric', 'GroupIoUMetric'):  # the latter: IoUMetric + class groups
                ev['output_dir'] = args.out
                ev['keep_results'] = True
    if args.tta:
        if 'tta_pipeline' not in cfg or 'tta_model' not in cfg:
            raise ValueError('--tta needs tta_pipeline and tta_model in the config')
        cfg.test_dataloader.dataset.pipeline = cfg.tta_pipeline
        cfg.tta_model.module = cfg.model
        cfg.model = cfg.tta_model
    return cfg


def main(argv=None):
    args = parse_args(argv)
    from mmengine.runner import Runner
    from mmseg.utils import register_all_modules

    import featup_plugin  # noqa: F401
    from featup_plugin.data.prepare import prepare_generated_datasets
    from featup_plugin.mmseg.engine import use_mmengine_checkpoint_loader

    register_all_modules(init_default_scope=False)
    use_mmengine_checkpoint_loader()  # torch >= 2.6 refuses mmengine's checkpoints by default
    cfg = build_cfg(args)
    prepare_generated_datasets(cfg)
    runner = Runner.from_cfg(cfg)
    return runner.test()


if __name__ == '__main__':
    main()
