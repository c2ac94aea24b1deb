#!/usr/bin/env python3
"""Fine-tune a pretrained mmseg segmentor with some of its Conv2d layers hot-swapped to PAC layers.

    python3 tools/model_converters/pac_hotswap.py CONFIG CHECKPOINT \
        (--targets 'backbone.layer4.*.conv2' 'decode_head.convs.0.conv' | --preset fcn8s) \
        [--guidance backbone:input] [--kernel-type gaussian] [--init-scale 1.0] [--work-dir DIR] \
        [--cfg-options k=v ...] [--launcher pytorch] [--dry-run]

CONFIG is the segmentor's ordinary config; the script wraps its model in ``dict(type='PacHotSwap', ...)``
(``featup_plugin.mmseg.segmentors.pac_hotswap``), sets ``load_from=CHECKPOINT`` (the swapped layers keep the Conv2d's
state-dict keys, so the checkpoint loads into them; at that point the model computes exactly what the checkpoint
did) and runs the config's training schedule, with evaluation as the config sets it. ``--dry-run`` prints the
swapped layers and exits. Targets are module names or glob patterns (``fnmatch``) of Conv2d layers of the
segmentor, e.g. ``'backbone.layer4.*.conv2'``. ``--preset fcn8s`` is the PAC paper's FCN-VGG16 recipe (conv3_3,
conv4_3 and conv5_3 guided by conv2_2 after its ReLU) for a segmentor whose backbone holds a torchvision VGG-16
``features`` module (the preset fixes the guidance too, so it does not combine with ``--guidance``).
"""

from __future__ import annotations

import argparse
import os
import os.path as osp

from mmengine.config import DictAction


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('config')
    p.add_argument('checkpoint', help="the original segmentor's checkpoint ('none' to start from the config's init)")
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument('--targets', nargs='+', help='Conv2d names or glob patterns to swap')
    which.add_argument('--preset', help="a recipe of featup_plugin.layers.pac_hotswap.PRESETS, e.g. 'fcn8s'")
    p.add_argument(
        '--guidance',
        default=None,
        help="'input', a module name (its output), '<name>[i]' or '<name>:input' (default: backbone:input, or the "
        "preset's)",
    )
    p.add_argument('--kernel-type', default='gaussian')
    p.add_argument('--init-scale', type=float, default=1.0)
    p.add_argument('--work-dir')
    p.add_argument('--cfg-options', nargs='+', action=DictAction, default=None)
    p.add_argument('--launcher', choices=['none', 'pytorch', 'slurm', 'mpi'], default='none')
    p.add_argument('--dry-run', action='store_true', help='build the swapped model, list the swapped layers, exit')
    p.add_argument('--local_rank', '--local-rank', type=int, default=0)
    args = p.parse_args(argv)
    os.environ.setdefault('LOCAL_RANK', str(args.local_rank))
    return args


def main(argv=None):
    args = parse_args(argv)
    from mmengine.config import ConfigDict
    from mmengine.runner import Runner
    from mmseg.utils import register_all_modules

    import featup_plugin  # noqa: F401  registers PacHotSwap and the other modules
    from featup_plugin.data.prepare import prepare_generated_datasets
    from featup_plugin.layers.pac_hotswap import swapped_layers
    from featup_plugin.mmseg.engine import build_runner_cfg, use_mmengine_checkpoint_loader

    register_all_modules(init_default_scope=False)
    use_mmengine_checkpoint_loader()
    cfg = build_runner_cfg(args.config, args.work_dir, args.cfg_options, args.launcher)
    if cfg.model.get('type') == 'PacHotSwap':
        raise ValueError(f'{args.config} is already a PacHotSwap config; run it with tools/train.py')
    from featup_plugin.layers.pac_hotswap import PRESETS

    if args.preset is not None and args.preset not in PRESETS:
        raise SystemExit(f'pac_hotswap.py: unknown --preset {args.preset!r}; presets are {sorted(PRESETS)}')
    if args.preset is not None and args.guidance is not None:
        raise SystemExit('pac_hotswap.py: --preset fixes the guidance layer too; give --targets to choose --guidance')
    swap = dict(targets=None if args.targets is None else list(args.targets), preset=args.preset)
    if args.preset is None:
        swap['guidance'] = args.guidance or 'backbone:input'
    cfg.model = ConfigDict(
        type='PacHotSwap', model=cfg.model, kernel_type=args.kernel_type, init_scale=args.init_scale, **swap
    )
    if args.checkpoint.lower() != 'none':
        if not osp.isfile(args.checkpoint):
            raise FileNotFoundError(f'checkpoint {args.checkpoint} does not exist')
        cfg.load_from, cfg.resume = args.checkpoint, False
    if args.dry_run:
        from mmengine.registry import init_default_scope
        from mmseg.registry import MODELS

        init_default_scope('mmseg')
        model = MODELS.build(cfg.model)
        print('swapped:', ', '.join(swapped_layers(model)))
        return
    prepare_generated_datasets(cfg)
    runner = Runner.from_cfg(cfg)
    print('swapped:', ', '.join(swapped_layers(runner.model)), flush=True)
    runner.train()


if __name__ == '__main__':
    main()
