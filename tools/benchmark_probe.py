#!/usr/bin/env python3
"""FeatUp's evaluation protocol on the project's pretrained backbone: label-free JBU / resize-conv training, then
frozen-feature linear probes (segmentation, depth) and CAM faithfulness for every upsampling method.

python3 tools/benchmark_probe.py --seed S --out results.json [--quick] [--checkpoint FILE] [--work-dir DIR]
    [--methods lowres,bilinear,...] [--threads N] [--upsampler-steps N]

Prints FeatUp-Table-1-style rows (method | mIoU | acc | BF | RMSE | δ1 | A.D | A.I) and the deltas vs bilinear,
and writes the settings and numbers to ``--out``. The checkpoint (default work_dirs/pretrain/vit-t8_synth.pth;
``--quick``: work_dirs/pretrain/vit-t8_synth_quick.pth) is pretrained when missing. Full run <= 30 min on 2 CPU
cores, ``--quick`` <= 3 min. See docs/evaluation.md#the-probe-benchmark and docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--seed', type=int, default=0, help='data, upsampler and probe seed (default 0)')
    p.add_argument('--out', required=True, help='results JSON to write')
    p.add_argument('--quick', action='store_true', help='tiny sizes: a smoke run of every stage (<= 3 min)')
    p.add_argument('--checkpoint', default=None, help='pretrained backbone (made when missing)')
    p.add_argument('--work-dir', default='work_dirs/benchmark_probe', help='where the generated data goes')
    p.add_argument('--methods', default=None, help='comma-separated subset of the methods (default: all)')
    p.add_argument('--threads', type=int, default=None, help='torch CPU threads (default: torch default)')
    p.add_argument(
        '--upsampler-steps',
        type=int,
        default=None,
        help="override the preset's upsampler training steps (a study, not the documented benchmark)",
    )
    args = p.parse_args(argv)
    from featup_plugin.evaluation.protocol import METHODS

    if args.seed < 0:
        p.error(f'--seed must be >= 0, got {args.seed}')
    if args.upsampler_steps is not None and args.upsampler_steps < 1:
        p.error(f'--upsampler-steps must be >= 1, got {args.upsampler_steps}')
    if args.threads is not None and args.threads < 1:
        p.error(f'--threads must be >= 1, got {args.threads}')
    out_dir = os.path.dirname(os.path.abspath(args.out))
    if os.path.isdir(args.out):
        p.error(f'--out {args.out!r} is a directory; give a file name')
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        p.error(f'--out: {out_dir!r} is not a directory')
    if args.methods is not None:
        names = [m.strip() for m in args.methods.split(',') if m.strip()]
        bad = [m for m in names if m not in METHODS]
        if not names or bad or len(set(names)) != len(names):
            p.error(f'--methods must be distinct names from {",".join(METHODS)}; got {args.methods!r}')
        args.methods = tuple(names)
    if args.checkpoint is None:
        args.checkpoint = os.path.join(
            'work_dirs', 'pretrain', 'vit-t8_synth_quick.pth' if args.quick else 'vit-t8_synth.pth'
        )
    elif os.path.isdir(args.checkpoint):
        p.error(f'--checkpoint {args.checkpoint!r} is a directory; give the .pth file')
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    import torch

    from featup_plugin.evaluation.protocol import (
        PRESETS,
        ProbeBenchConfig,
        ensure_checkpoint,
        format_table,
        run_probe_benchmark,
    )

    if args.threads:
        torch.set_num_threads(args.threads)
    kw = dict(PRESETS['quick' if args.quick else 'full'], seed=args.seed)
    if args.methods:
        kw['methods'] = args.methods
    if args.upsampler_steps is not None:
        kw['upsampler_steps'] = args.upsampler_steps
    cfg = ProbeBenchConfig(**kw).validate()
    made = ensure_checkpoint(args.checkpoint, quick=args.quick)
    results = run_probe_benchmark(cfg, args.work_dir, args.checkpoint)
    results['settings'].update(preset='quick' if args.quick else 'full', pretrained_now=made)
    results['settings']['command'] = ' '.join(
        ['python3', 'tools/benchmark_probe.py'] + list(sys.argv[1:] if argv is None else argv)
    )
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, 'w') as f:
        json.dump(results, f, indent=1)
    print(format_table(results))
    up = results['upsamplers']
    for kind, rec in up.items():
        print(f'{kind}: multi-view loss {rec["first_loss"]:.4f} -> {rec["last_loss"]:.4f} ({rec["seconds"]:.0f} s)')
    extra = f'; pretraining {made["seconds"]:.0f} s' if made['created'] else ''
    print(f'wrote {args.out} ({results["seconds"]:.0f} s{extra})')
    return 0


if __name__ == '__main__':
    sys.exit(main())
