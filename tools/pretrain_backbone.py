#!/usr/bin/env python3
"""Pretrain the evaluation protocol's backbone: a small timm ViT on generated scenes with image-level labels.

python3 tools/pretrain_backbone.py --out work_dirs/pretrain/vit-t8_synth.pth [--steps 300] [--num-images 400]
    [--seed 0] [--quick]

Trains on random crops of scenes from their own seed stream (disjoint from every dataset split), with the
classes present in each crop as multi-label targets (BCE), like ImageNet pretraining is to FeatUp's backbones;
prints the held-out crop mAP. The file loads as ``TimmViT(model_name, model_kwargs=..., pretrained=FILE)`` (mmseg),
``TimmViTFeatures`` (core) or ``featup_plugin.evaluation.pretrain.load_pretrained(FILE)`` (backbone + the
CAM classifier); its ``meta`` says what it was trained on. See docs/evaluation.md#pretrained-backbone.
"""

from __future__ import annotations

import argparse
import json
import os
import sys


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--out', default='work_dirs/pretrain/vit-t8_synth.pth', help='checkpoint to write')
    p.add_argument('--num-images', type=int, default=400, help='pretraining scenes')
    p.add_argument('--size', type=int, default=128, help='scene size')
    p.add_argument('--crop', type=int, default=64, help='training crop size')
    p.add_argument('--steps', type=int, default=300)
    p.add_argument('--batch-size', type=int, default=32)
    p.add_argument('--lr', type=float, default=1e-3)
    p.add_argument('--seed', type=int, default=0)
    p.add_argument('--quick', action='store_true', help='a smoke run: 8 scenes, 3 steps (for tests)')
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    from featup_plugin.evaluation.pretrain import pretrain_backbone, save_pretrained

    kw = dict(
        num_images=args.num_images,
        size=args.size,
        crop=args.crop,
        steps=args.steps,
        batch_size=args.batch_size,
        lr=args.lr,
        seed=args.seed,
    )
    if args.quick:
        kw.update(num_images=8, size=64, crop=32, steps=3, batch_size=4, num_val=4)
    result = pretrain_backbone(**kw)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    save_pretrained(result, args.out)
    meta = result['meta']
    print(json.dumps({k: meta[k] for k in ('model_name', 'model_kwargs', 'val_map', 'first_loss', 'final_loss')}))
    print(f'wrote {args.out} (trained on {meta["trained_on"]}; {meta["seconds"]:.0f} s)')
    return 0


if __name__ == '__main__':
    sys.exit(main())
