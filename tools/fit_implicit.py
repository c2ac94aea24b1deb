#!/usr/bin/env python3
"""Fit implicit FeatUp (a per-image implicit feature upsampler) to one or more images.

    python3 tools/fit_implicit.py IMAGE [IMAGE ...] [--out-dir DIR] [--model vit_small_patch16_224]
        [--model-kwargs depth=4] [--weights FILE | --pretrained] [--steps 1200 --views 10] [--size 224]

Writes ``DIR/<image name>.implicit.pt`` per image (MLP + PCA + image, ~1 MB), loadable with
``featup_plugin.training.implicit.ImplicitFeatUp.load(path)``; ``.features((H, W))`` answers at any size.
FeatUp's defaults are 1200 steps x 10 views drawn from a bank of 3000 jittered views (``--bank-views``; 0: fresh
views every step), fitted at the image size, NAdam 2e-3, its attention downsampler (29 px windows at stride 16;
``--downsampler-kernel``) and objective (docs/training.md#fitting-fit_implicit): about a minute per image on a GPU,
hours on a 2-core CPU. ``--preset cpu`` is the CPU-sized fit: 300 steps x 4 views drawn from the 50 PCA views
(``--view-bank``: the backbone runs 50 times in all) and features rendered at 112 px while fitting
(``--fit-size``; the model still answers at any size) (docs/benchmarks.md). Explicit options override the preset's.
The backbone is a frozen timm ViT: random init unless ``--weights`` (a timm state dict, or a checkpoint of
``tools/train.py configs/*/jbu_*`` whose ViT is under ``backbone.model.``) or ``--pretrained`` (timm's hub).
"""

from __future__ import annotations

import argparse
import os
import os.path as osp
import sys
import time


def build_parser():
    p = argparse.ArgumentParser(description='Fit implicit FeatUp to images')
    p.add_argument('images', nargs='+')
    p.add_argument('--out-dir', default='work_dirs/implicit')
    p.add_argument('--model', default='vit_small_patch16_224', help='timm ViT name')
    p.add_argument('--model-kwargs', nargs='*', default=[], help='timm.create_model arguments, e.g. depth=4')
    p.add_argument('--weights', default=None, help='local ViT weights (timm state dict or a training checkpoint)')
    p.add_argument('--pretrained', action='store_true', help="timm's hub weights (needs the network)")
    p.add_argument('--size', type=int, default=224, help='images are resized + centre-cropped to this size')
    p.add_argument(
        '--preset',
        choices=sorted(PRESETS),
        default=None,
        help="'cpu': " + ', '.join(f'--{k.replace("_", "-")} {v}' for k, v in PRESETS['cpu'].items()),
    )
    p.add_argument('--steps', type=int, default=None, help='default 1200 (FeatUp)')
    p.add_argument('--views', type=int, default=None, help='jittered views per step, default 10 (FeatUp)')
    p.add_argument(
        '--bank-views',
        type=int,
        default=None,
        help='jittered views computed up front, drawn from by every step (default 3000, FeatUp; 0: fresh views)',
    )
    p.add_argument(
        '--view-bank',
        action='store_true',
        default=None,
        help="draw each step's views from the PCA views alone (overrides --bank-views)",
    )
    p.add_argument('--fit-size', type=int, default=None, help='render size while fitting (default: --size)')
    p.add_argument('--pca-dim', type=int, default=128)
    p.add_argument('--pca-views', type=int, default=50)
    p.add_argument('--max-pad', type=int, default=30)
    p.add_argument('--max-zoom', type=float, default=1.8)
    p.add_argument('--lr', type=float, default=2e-3, help="NAdam's learning rate (FeatUp: NAdam's default 2e-3)")
    p.add_argument('--downsampler', default='attention', choices=['attention', 'blur'])
    p.add_argument(
        '--downsampler-kernel',
        type=int,
        default=None,
        help="the downsampler's window (default: FeatUp's 29 px at stride 16, scaled to the backbone's stride)",
    )
    p.add_argument('--seed', type=int, default=0)
    p.add_argument('--device', default='cuda' if _cuda() else 'cpu')
    p.add_argument('--quiet', action='store_true', help='no progress bar')
    return p


DEFAULTS = dict(steps=1200, views=10, view_bank=None, bank_views=3000, fit_size=None)
PRESETS = {'cpu': dict(steps=300, views=4, view_bank=True, fit_size=112)}


def resolve(args):
    """Fill the options left unset from the preset, then from FeatUp's defaults."""
    preset = PRESETS.get(args.preset, {})
    if args.fit_size is None and preset.get('fit_size'):  # the preset never renders above the image size
        args.fit_size = min(preset['fit_size'], args.size)
    for k, v in DEFAULTS.items():
        if getattr(args, k) is None:
            setattr(args, k, preset.get(k, v))
    if args.view_bank:
        args.bank_views = args.pca_views
    return args


def _cuda():
    import torch

    return torch.cuda.is_available()


class Bar:
    """A one-line progress bar on stderr: step, loss, elapsed, remaining."""

    def __init__(self, name, quiet=False):
        self.name, self.quiet, self.t0 = name, quiet, time.time()

    def __call__(self, step, steps, loss):
        if self.quiet or not (step == steps or step % max(1, steps // 100) == 0):
            return
        el = time.time() - self.t0
        eta = el / step * (steps - step)
        n = int(30 * step / steps)
        sys.stderr.write(
            f'\r{self.name}: [{"#" * n}{"." * (30 - n)}] {step}/{steps} loss {loss:.4f} '
            f'{el:.0f}s elapsed, {eta:.0f}s left'
        )
        if step == steps:
            sys.stderr.write('\n')
        sys.stderr.flush()


def main(argv=None):
    args = resolve(build_parser().parse_args(argv))

    from featup_plugin.data.images import load_image
    from featup_plugin.featurizers import TimmFeaturizer, parse_model_kwargs
    from featup_plugin.training.implicit import fit_implicit

    for path in args.images:
        if not osp.isfile(path):
            raise SystemExit(f'no such image: {path}')
    featurizer = TimmFeaturizer(
        args.model, pretrained=args.pretrained, weights=args.weights, **parse_model_kwargs(args.model_kwargs)
    ).to(args.device)
    os.makedirs(args.out_dir, exist_ok=True)
    for path in args.images:
        img = load_image(path, args.size)[None].to(args.device)
        name = osp.splitext(osp.basename(path))[0]
        t0 = time.time()
        model, losses = fit_implicit(
            img,
            featurizer,
            steps=args.steps,
            views=args.views,
            max_pad=args.max_pad,
            max_zoom=args.max_zoom,
            pca_dim=args.pca_dim,
            pca_views=args.pca_views,
            lr=args.lr,
            downsampler=args.downsampler,
            downsampler_kernel=args.downsampler_kernel,
            seed=args.seed,
            bank_views=args.bank_views,
            fit_size=args.fit_size,
            progress=Bar(name, args.quiet),
        )
        dt = time.time() - t0
        out = osp.join(args.out_dir, f'{name}.implicit.pt')
        model.save(
            out,
            extra=dict(
                source=osp.abspath(path),
                backbone=args.model,
                model_kwargs=parse_model_kwargs(args.model_kwargs),
                steps=args.steps,
                views=args.views,
                view_bank=bool(args.view_bank),
                bank_views=args.bank_views,
                fit_size=args.fit_size,
                seconds=dt,
            ),
        )
        first = sum(losses[:10]) / max(1, len(losses[:10])) if losses else float('nan')
        last = sum(losses[-10:]) / max(1, len(losses[-10:])) if losses else float('nan')
        how = (
            f'{args.steps} steps x {args.views} views'
            + (' (view bank)' if args.view_bank else f' (bank of {args.bank_views})' if args.bank_views else ' (fresh)')
            + (f', fitted at {args.fit_size} px' if args.fit_size else '')
        )
        print(
            f'{path}: {how} in {dt:.1f}s on {args.device}; loss {first:.4f} '
            f'(first 10) -> {last:.4f} (last 10); wrote {out} ({osp.getsize(out) / 1e6:.2f} MB)'
        )
    return 0


if __name__ == '__main__':
    sys.exit(main())
