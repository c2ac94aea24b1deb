#!/usr/bin/env python3
"""FeatUp's probe protocol on COCO-Stuff-27: a frozen hub model (backbone + JBU), a linear probe per task.

python3 tools/train_probe.py --data-root data/cocostuff --model dino16 --task seg [--method jbu]
    [--upsampler-weights FILE] [--backbone-weights FILE] [--no-pretrained] [--depth-root DIR]
    [--size 224] [--batch-size 2] [--lr 5e-3] [--dropout 0] [--epochs 1 | --iters N]
    [--limit-train N] [--limit-val N] [--device cuda] [--workers 4] [--out results.json]

``--method``: ``jbu`` (the model's upsampler to the image size), ``lowres`` (the backbone's features),
``bilinear`` / ``bicubic`` (the low-resolution features resized to the image size); run one per method for a
FeatUp-Table-1 row each. ``--task depth`` needs ``--depth-root`` (per-image depth or MiDaS pseudo-depth maps,
``DIR/<split>/ID.npy|png``). Prints and writes ``{"settings": ..., "seg": {miou, acc, bf}}`` or ``"depth":
{rmse, delta1}``. Data layout and FeatUp's settings: docs/evaluation.md#featups-protocol-on-coco-stuff-27.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)


def parse_args(argv=None):
    from featup_plugin.evaluation.frozen_probe import FROZEN_METHODS
    from featup_plugin.hub import list_models

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--data-root', required=True, help='COCO-Stuff folder (images/, annotations/[, curated/])')
    p.add_argument('--model', default='dino16', choices=list_models(), help="FeatUp hub model (default 'dino16')")
    p.add_argument('--task', default='seg', choices=('seg', 'depth'))
    p.add_argument('--method', default='jbu', choices=FROZEN_METHODS, help='how the features are upsampled')
    p.add_argument('--upsampler-weights', default=None, help='local upsampler checkpoint (else the download)')
    p.add_argument('--backbone-weights', default=None, help='local backbone checkpoint (else the download)')
    p.add_argument('--no-pretrained', action='store_true', help='random init for what no file gives (tests)')
    p.add_argument('--use-norm', default=None, choices=('true', 'false'), help="ChannelNorm (default: FeatUp's)")
    p.add_argument('--depth-root', default=None, help='depth targets DIR/<split>/ID.npy|png (task depth)')
    p.add_argument('--image-list', default='auto', help="'auto' (FeatUp's curated list if present), 'all', or a file")
    p.add_argument('--size', type=int, default=224, help='image / label size (default 224, FeatUp)')
    p.add_argument('--batch-size', type=int, default=2, help='default 2 (FeatUp)')
    p.add_argument('--lr', type=float, default=5e-3, help="Adam lr (default 5e-3: what FeatUp's code runs)")
    p.add_argument('--dropout', type=float, default=0.0, help="before the 1x1 conv (default 0: FeatUp's code)")
    p.add_argument('--epochs', type=int, default=1, help='passes over the training split (ignored with --iters)')
    p.add_argument('--iters', type=int, default=None, help='probe steps instead of --epochs')
    p.add_argument('--limit-train', type=int, default=None, help='use the first N training images')
    p.add_argument('--limit-val', type=int, default=None, help='use the first N validation images')
    p.add_argument('--seed', type=int, default=0)
    p.add_argument('--device', default='cpu')
    p.add_argument('--workers', type=int, default=2, help='data-loader workers')
    p.add_argument('--trust', action='store_true', help='unpickle trusted local Lightning files')
    p.add_argument('--out', default=None, help='results JSON')
    args = p.parse_args(argv)
    for name in ('size', 'batch_size', 'epochs'):
        if getattr(args, name) < 1:
            p.error(f'--{name.replace("_", "-")} must be >= 1, got {getattr(args, name)}')
    for name in ('iters', 'limit_train', 'limit_val'):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            p.error(f'--{name.replace("_", "-")} must be >= 1, got {getattr(args, name)}')
    if args.workers < 0:
        p.error(f'--workers must be >= 0, got {args.workers}')
    if not args.lr > 0:
        p.error(f'--lr must be > 0, got {args.lr}')
    if args.task == 'depth' and args.depth_root is None:
        p.error('--task depth needs --depth-root (per-image depth or MiDaS pseudo-depth maps)')
    if not os.path.isdir(args.data_root):
        p.error(f'--data-root {args.data_root!r} is not a folder')
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    import torch

    from featup_plugin import hub
    from featup_plugin.data.cocostuff import COCOSTUFF27_CLASSES, CocoStuff27
    from featup_plugin.evaluation.frozen_probe import evaluate_frozen_probe, frozen_features, train_frozen_probe

    torch.manual_seed(args.seed)
    image_list = None if args.image_list == 'all' else args.image_list
    depth = args.depth_root if args.task == 'depth' else None
    data = {
        split: CocoStuff27(args.data_root, split, args.size, image_list, depth_root=depth, limit=limit)
        for split, limit in (('train', args.limit_train), ('val', args.limit_val))
    }
    gen = torch.Generator().manual_seed(args.seed)
    loaders = {
        split: torch.utils.data.DataLoader(
            ds,
            batch_size=args.batch_size,
            shuffle=split == 'train',
            generator=gen if split == 'train' else None,
            num_workers=args.workers,
            drop_last=False,
        )
        for split, ds in data.items()
    }
    use_norm = None if args.use_norm is None else args.use_norm == 'true'
    model = hub.load(
        args.model,
        pretrained=not args.no_pretrained,
        use_norm=use_norm,
        upsampler_weights=args.upsampler_weights,
        backbone_weights=args.backbone_weights,
        device=args.device,
        trust=args.trust,
    )
    print(model)
    fn = frozen_features(model, args.method)
    t0 = time.time()
    probe = train_frozen_probe(
        fn,
        loaders['train'],
        args.task,
        num_classes=len(COCOSTUFF27_CLASSES),
        iters=args.iters,
        epochs=args.epochs,
        lr=args.lr,
        dropout=args.dropout,
        seed=args.seed,
        device=args.device,
        log=print,
    )
    t1 = time.time()
    metrics = evaluate_frozen_probe(
        fn, probe, loaders['val'], args.task, num_classes=len(COCOSTUFF27_CLASSES), device=args.device
    )
    t2 = time.time()
    settings = {k: v for k, v in vars(args).items() if k != 'out'}
    settings.update(n_train=len(data['train']), n_val=len(data['val']), weights=model.weights)
    result = {'settings': settings, args.task: metrics, 'time_s': {'train': t1 - t0, 'eval': t2 - t1}}
    row = ' | '.join(f'{k} {v:.2f}' for k, v in metrics.items())
    print(f'{args.model} {args.method} {args.task}: {row}  (train {t1 - t0:.0f} s, eval {t2 - t1:.0f} s)')
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, 'w') as f:
            json.dump(result, f, indent=2, default=str)
    return result


if __name__ == '__main__':
    main()
