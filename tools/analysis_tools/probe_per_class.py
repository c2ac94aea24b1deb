#!/usr/bin/env python3
"""Per-class IoU of the probe benchmark's segmentation probes, for a finished ``tools/benchmark_probe.py`` run.

python3 tools/analysis_tools/probe_per_class.py RESULTS.json [--methods bilinear,jbu] [--retrain] [--threads N]

Reads the run's settings from RESULTS.json, regenerates nothing (the run's data directory must exist), loads the
upsamplers the run saved (``<data dir>/upsamplers.pth``; ``--retrain`` retrains them with the run's settings when
the file is missing, the multi-view losses then checked against the JSON's), recomputes each method's features,
retrains its seg probe with the run's settings and prints the per-class IoU, with the run's mIoU beside the
recomputed one (they agree when the run is reproduced). With ``--retrain`` it also prints the JBU's
``jbu_kernel_stats``. Implicit FeatUp is not supported (refitting it is the slow part of the run).
"""

from __future__ import annotations

import argparse
import json
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('results')
    p.add_argument('--methods', default='bilinear,jbu')
    p.add_argument('--retrain', action='store_true', help='retrain the upsamplers when upsamplers.pth is missing')
    p.add_argument('--threads', type=int, default=None)
    p.add_argument(
        '--balanced',
        action='store_true',
        help='also train each seg probe with inverse-frequency class weights (train-split pixel counts, normalised '
        "to mean 1): not the benchmark's probe, a check of what plain CE leaves out",
    )
    args = p.parse_args(argv)
    import numpy as np
    import torch

    from featup_plugin.data.synthetic import CLASSES
    from featup_plugin.evaluation import protocol as P
    from featup_plugin.evaluation.pretrain import load_pretrained, normalize_images
    from featup_plugin.evaluation.probe import predict_probe, seg_metrics, train_probe

    if args.threads:
        torch.set_num_threads(args.threads)
    with open(args.results) as f:
        res = json.load(f)
    st = res['settings']
    names = [f.name for f in P.dataclasses.fields(P.ProbeBenchConfig)]
    cfg = P.ProbeBenchConfig(**{k: (tuple(v) if k == 'methods' else v) for k, v in st.items() if k in names})
    methods = [m.strip() for m in args.methods.split(',') if m.strip()]
    if 'implicit' in methods:
        p.error('implicit is not supported (its per-image fits are the slow part of the run)')
    backbone, _, pmeta = load_pretrained(st['checkpoint'])
    stride = 8 if 'patch8' in pmeta['model_name'] else 16
    root = res['data']['root']
    train, val = P.load_split(root, 'train', cfg.num_train), P.load_split(root, 'val', cfg.num_val)
    x_train, x_val = normalize_images(train['images']), normalize_images(val['images'])

    @torch.no_grad()
    def extract_lr(img):
        return backbone(img)[0]

    learned = {}
    path = os.path.join(root, 'upsamplers.pth')
    needed = [m for m in methods if m in P.LEARNED]
    dim, stages = int(extract_lr(x_val[:1]).shape[1]), P.num_x2_stages(stride)
    if needed and os.path.isfile(path):
        states = torch.load(path, map_location='cpu')
        for kind in needed:
            net = P.JBUStack(dim, num_stages=stages) if kind == 'jbu' else P.ResizeConv(dim, stages)
            net.load_state_dict(states[kind])
            learned[kind] = net.eval().requires_grad_(False)
    elif needed:
        if not args.retrain:
            p.error(f'{path} is missing (the run predates saving it): pass --retrain')
        for kind in needed:
            learned[kind], losses = P.train_upsampler(kind, extract_lr, x_train, dim, stride, cfg)
            same = np.allclose(losses, res['upsamplers'][kind]['losses'], rtol=1e-4, atol=1e-5)
            print(f"{kind}: retrained, losses equal to the run's: {same}")
    if 'jbu' in learned:
        lr_size = (cfg.image_size // stride,) * 2
        for i, rec in enumerate(P.jbu_kernel_stats(learned['jbu'], x_val, val['labels'], lr_size)):
            print(
                f'jbu stage {i + 1}: '
                + json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in rec.items()})
            )

    k = len(CLASSES)
    gt = val['labels']
    counts = torch.bincount(train['labels'][train['labels'] != 255], minlength=k).double()
    freq_val = torch.bincount(gt[gt != 255], minlength=k).double()
    print('val pixel share (%): ' + ', '.join(f'{c} {100 * v / freq_val.sum():.2f}' for c, v in zip(CLASSES, freq_val)))
    weight = None
    if args.balanced:
        inv = torch.where(counts > 0, 1.0 / counts.clamp_min(1), torch.zeros_like(counts))
        weight = (inv / inv[counts > 0].mean()).float()
    print('| method | ' + ' | '.join(CLASSES) + ' | mIoU (recomputed / run) | BF |')
    print('|' + '---|' * (k + 3))
    for method in methods:
        f_train = P._features(method, x_train, extract_lr, learned, cfg, None)
        f_val = P._features(method, x_val, extract_lr, learned, cfg, None)
        for tag, w in (('', None), (' (balanced CE)', weight)) if args.balanced else (('', None),):
            probe = train_probe(f_train, train['labels'], 'seg', num_classes=k, class_weight=w, **P.probe_settings(cfg))
            pred = predict_probe(probe, f_val, tuple(gt.shape[-2:]), 'seg')
            valid = gt != 255
            ious = []
            for c in range(k):
                pc, gc = (pred == c) & valid, (gt == c) & valid
                union = int((pc | gc).sum())
                ious.append(100 * int((pc & gc).sum()) / union if union else float('nan'))
            m = seg_metrics(pred, gt, k)
            run = res['methods'].get(method, {}).get('seg', {}).get('miou', float('nan')) if not tag else float('nan')
            print(
                f'| {method}{tag} | '
                + ' | '.join(f'{v:.1f}' for v in ious)
                + f' | {m["miou"]:.2f} / {run:.2f} | {m["bf"]:.2f} |'
            )
    return 0


if __name__ == '__main__':
    sys.exit(main())
