"""What the FeatUp neck buys and costs in segmentation, against its bilinear twin (ResizeNeck).

    python3 tools/benchmarks/benchmark_seg.py                       # both parts, CPU
    python3 tools/benchmarks/benchmark_seg.py --only quality --cases fcn_featup,fcn_bilinear   # the main job and twin
    python3 tools/benchmarks/benchmark_seg.py --only quality --iters 400
    python3 tools/benchmarks/benchmark_seg.py --only quality --cases sft,sft_featup,fcn_featup
    python3 tools/benchmarks/benchmark_seg.py --only overhead --device cuda --batch 2

quality:  on the generated dataset, train the CPU configs of configs/synthetic with equal iterations, data
          order and seed (each in a fresh process), then report mIoU and the boundary F-score (bF, tolerance
          2 px), the thin-class IoU (thin_iou: mean IoU of wire, pole, vine), small_iou (pebble, marker) and
          the per-class IoU on the validation split: the difference FeatUp exists for. Cases (--cases):
          fcn_featup (the README's main job: FCN head after FeatUpJBU, class-balanced cross-entropy),
          fcn_bilinear (its bilinear twin, same recipe), fcn_featup_ce / fcn_bilinear_ce (the same pair with
          the plain cross-entropy, the recipe the SFT cases below inherit),
          sft (SFTGuidedHead, the SFT-guided decoder, without neck), sft_featup (FeatUpJBU + SFTGuidedHead),
          sft_prior (SFTGuidedHead conditioned on its own coarse segmentation prior instead of the image),
          sft_prior_image (conditioned on that prior and the image).
overhead: one training step (forward, backward, optimiser) and one inference of the ViT-S/16 models of
          configs/featup (linear probe to the image size; FCN head at stride 4) at 512x512, FeatUpJBU vs its
          bilinear twin: time (median of --repeats after a warm-up) and peak memory (CPU: peak RSS above the
          built model; CUDA: max_memory_allocated above the model), with ratios from this one run. Random-init
          backbone (no internet): speed and memory do not depend on the weights. Then the same for the SFT
          guided decoder (sft_vit-s16-dino[_featup], to the image resolution) against the FCN head with
          bilinear neck (fcn_vit-s16-dino_bilinear).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SYNTH_DIR = os.path.join(ROOT, 'configs', 'synthetic')
MAIN_JOB = 'fcn-cb_r18_featup_1xb8-600i_featup-synth-128x128.py'  # the README's main job
MAIN_JOB_TWIN = 'fcn-cb_r18_bilinear_1xb8-600i_featup-synth-128x128.py'
QUALITY_CASES = {  # name: (config, what it is)
    'fcn_featup': (MAIN_JOB, 'FCN + FeatUpJBU'),
    'fcn_bilinear': (MAIN_JOB_TWIN, 'FCN + bilinear (ResizeNeck)'),
    'fcn_featup_ce': ('fcn_r18_featup_1xb8-400i_featup-synth-128x128.py', 'FCN + FeatUpJBU, plain CE'),
    'fcn_bilinear_ce': ('fcn_r18_bilinear_1xb8-400i_featup-synth-128x128.py', 'FCN + bilinear, plain CE'),
    'sft': ('sft_r18_1xb8-400i_featup-synth-128x128.py', 'SFTGuidedHead (no neck)'),
    'sft_featup': ('sft_r18_featup_1xb8-400i_featup-synth-128x128.py', 'FeatUpJBU + SFTGuidedHead'),
    'sft_prior': ('sft-prior_r18_1xb8-400i_featup-synth-128x128.py', "SFTGuidedHead, condition='prior'"),
    'sft_prior_image': (
        'sft-prior-image_r18_1xb8-400i_featup-synth-128x128.py',
        "SFTGuidedHead, condition='prior+image'",
    ),
}
# differences printed when both cases ran: (a, b) -> "a - b"
QUALITY_DIFFS = [
    ('fcn_featup', 'fcn_bilinear'),
    ('fcn_featup_ce', 'fcn_bilinear_ce'),
    ('fcn_featup', 'fcn_featup_ce'),
    ('fcn_bilinear', 'fcn_bilinear_ce'),
    ('sft', 'fcn_bilinear_ce'),
    ('sft', 'fcn_featup_ce'),
    ('sft_featup', 'fcn_featup_ce'),
    ('sft_featup', 'sft'),
    ('sft_prior', 'sft'),
    ('sft_prior', 'fcn_bilinear_ce'),
    ('sft_prior_image', 'sft'),
]
VIT = {
    'linear (to image)': os.path.join(ROOT, 'configs', 'featup', 'linear_vit-s16-dino_{}_8xb2-40k_ade20k-512x512.py'),
    'fcn (stride 4)': os.path.join(ROOT, 'configs', 'featup', 'fcn_vit-s16-dino_{}_8xb2-80k_ade20k-512x512.py'),
}

SFT_VIT = {
    'SFTGuidedHead (16 -> 1)': os.path.join(ROOT, 'configs', 'featup', 'sft_vit-s16-dino_8xb2-80k_ade20k-512x512.py'),
    'FeatUpJBU + SFTGuidedHead (4 -> 1)': os.path.join(
        ROOT, 'configs', 'featup', 'sft_vit-s16-dino_featup_8xb2-80k_ade20k-512x512.py'
    ),
}


def _rss_mib() -> float:
    with open('/proc/self/statm') as f:
        return int(f.read().split()[1]) * os.sysconf('SC_PAGE_SIZE') / 2**20


def _setup():
    from mmseg.utils import register_all_modules

    import featup_plugin  # noqa: F401

    register_all_modules()


# -- quality ----------------------------------------------------------------------------------------------
def quality_worker(spec: dict) -> dict:
    _setup()
    from mmengine.config import Config
    from mmengine.runner import Runner

    from featup_plugin.data.prepare import prepare_generated_datasets

    cfg = Config.fromfile(spec['config'])
    root = spec['data_root']
    cfg.synthetic_data.update(root=root, num_train=spec['num_train'], num_val=spec['num_val'], size=spec['size'])
    for loader in (cfg.train_dataloader, cfg.val_dataloader, cfg.test_dataloader):
        loader.dataset.data_root = root
    iters = spec['iters'] or cfg.train_cfg.max_iters  # None: the config's own schedule
    cfg.train_cfg.max_iters = iters
    cfg.train_cfg.val_interval = iters + 1  # evaluate once, below
    cfg.param_scheduler[-1].end = iters
    if len(cfg.param_scheduler) > 1 and cfg.param_scheduler[0].end >= iters:  # tiny runs: shorten the warm-up
        cfg.param_scheduler[0].end = cfg.param_scheduler[-1].begin = max(1, iters // 5)
    cfg.default_hooks.checkpoint.interval = iters + 1
    cfg.default_hooks.logger.interval = max(1, iters // 10)
    cfg.randomness = dict(seed=spec['seed'])
    for ev in cfg.val_evaluator:  # per-class IoU in the metrics: one group per class next to thin / small
        if ev['type'] == 'GroupIoUMetric':
            from featup_plugin.data.synthetic import CLASSES

            ev['class_groups'] = dict(ev.get('class_groups') or {}, **{c: [c] for c in CLASSES})
    cfg.work_dir = spec['work_dir']
    prepare_generated_datasets(cfg)
    runner = Runner.from_cfg(cfg)
    t0 = time.perf_counter()
    runner.train()
    train_s = time.perf_counter() - t0
    metrics = runner.val_loop.run()
    out = dict(mIoU=float(metrics['mIoU']), bF=float(metrics['bF']), train_s=train_s, iters=iters)
    for k in ('thin_iou', 'small_iou'):
        out[k] = float(metrics.get(k, float('nan')))
    out['class_iou'] = {
        c: float(metrics.get(f'{c}_iou', float('nan'))) for c in runner.val_loop.dataloader.dataset.metainfo['classes']
    }
    return out


# -- overhead ---------------------------------------------------------------------------------------------
def overhead_worker(spec: dict) -> dict:
    _setup()
    import torch
    from mmengine.config import Config
    from mmengine.optim import build_optim_wrapper
    from mmengine.structures import PixelData
    from mmseg.registry import MODELS
    from mmseg.structures import SegDataSample

    torch.manual_seed(0)
    dev = spec['device']
    cfg = Config.fromfile(spec['config'])
    cfg.model.backbone.pretrained = False
    cfg.model.data_preprocessor.size = (spec['size'], spec['size'])  # inputs are that size: no padding
    cfg.model.test_cfg = dict(mode='whole')
    if dev == 'cpu':  # SyncBN needs a process group; BN costs the same
        cfg = Config(json.loads(json.dumps(cfg.to_dict()).replace('"SyncBN"', '"BN"')))
    model = MODELS.build(cfg.model).to(dev)
    model.init_weights()
    optim = build_optim_wrapper(model, cfg.optim_wrapper)
    n, s = spec['batch'], spec['size']
    ncls = cfg.model.decode_head.num_classes

    def data():
        samples = []
        for _ in range(n):
            d = SegDataSample()
            d.gt_sem_seg = PixelData(data=torch.randint(0, ncls, (1, s, s)))
            d.set_metainfo(dict(img_shape=(s, s), ori_shape=(s, s), pad_shape=(s, s)))
            samples.append(d)
        return dict(
            inputs=[torch.randint(0, 256, (3, s, s), dtype=torch.uint8) for _ in range(n)], data_samples=samples
        )

    cuda = dev == 'cuda'
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    batch = data()

    def train():
        model.train()
        model.train_step(batch, optim)

    def infer():
        model.eval()
        with torch.no_grad():
            model.val_step(batch)

    fn = train if spec['mode'] == 'train' else infer
    if cuda:
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        base = _rss_mib()
    fn()  # warm-up (also allocates the optimiser state)
    sync()
    times = []
    for _ in range(spec['repeats']):
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
    if cuda:
        peak = (torch.cuda.max_memory_allocated() - base) / 2**20
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - base
    return dict(time=statistics.median(times), peak_mib=peak)


def run_case(kind: str, spec: dict) -> dict:
    cmd = [sys.executable, os.path.abspath(__file__), '--worker', kind, json.dumps(spec)]
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode != 0:
        raise RuntimeError(f'{kind} case {spec} failed:\n{res.stderr[-3000:]}')
    return json.loads(res.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--only', choices=['quality', 'overhead'])
    p.add_argument('--device', default='cpu')
    p.add_argument(
        '--iters', type=int, default=None, help="training iterations per model (quality; default: each config's own)"
    )
    p.add_argument(
        '--cases',
        default=','.join(QUALITY_CASES),
        help=f'comma-separated quality cases, of {list(QUALITY_CASES)} (default: all)',
    )
    p.add_argument('--seed', type=int, default=0)
    p.add_argument('--num-train', type=int, default=200)
    p.add_argument('--num-val', type=int, default=50)
    p.add_argument('--image-size', type=int, default=128, help='generated image size (quality)')
    p.add_argument('--data-root', default=os.path.join(ROOT, 'data', 'featup_synth_bench'))
    p.add_argument('--work-dir', default=os.path.join(ROOT, 'work_dirs', 'benchmark_seg'))
    p.add_argument('--size', type=int, default=512, help='input size (overhead)')
    p.add_argument('--batch', type=int, default=1, help='batch size (overhead)')
    p.add_argument('--repeats', type=int, default=3)
    p.add_argument('--worker', nargs=2, help=argparse.SUPPRESS)
    args = p.parse_args()
    args.cases = [c.strip() for c in args.cases.split(',') if c.strip()]
    bad = [c for c in args.cases if c not in QUALITY_CASES]
    if bad or not args.cases:
        p.error(f'--cases: unknown {bad}; choose from {list(QUALITY_CASES)}')
    if args.worker:
        kind, spec = args.worker[0], json.loads(args.worker[1])
        out = quality_worker(spec) if kind == 'quality' else overhead_worker(spec)
        print(json.dumps(out))
        return

    import torch

    print(
        f'# {platform.processor() or platform.machine()}, torch {torch.__version__}, '
        f'{torch.get_num_threads()} threads, device {args.device}'
    )
    if args.only in (None, 'quality'):
        print(
            f'\n## quality: generated dataset ({args.num_train} train / {args.num_val} val, '
            f'{args.image_size}^2), {args.iters or "the configured"} iterations, seed {args.seed}'
        )
        print('| model | iterations | mIoU | thin IoU | small IoU | bF (2 px) | train time |')
        print('|---|---|---|---|---|---|---|')
        res = {}
        for case in args.cases:
            config, name = QUALITY_CASES[case]
            res[case] = r = run_case(
                'quality',
                dict(
                    config=os.path.join(SYNTH_DIR, config),
                    data_root=args.data_root,
                    num_train=args.num_train,
                    num_val=args.num_val,
                    size=args.image_size,
                    iters=args.iters,
                    seed=args.seed,
                    work_dir=os.path.join(args.work_dir, case),
                ),
            )
            print(
                f'| {name} | {r["iters"]} | {r["mIoU"]:.2f} | {r["thin_iou"]:.2f} | {r["small_iou"]:.2f} '
                f'| {r["bF"]:.2f} | {r["train_s"]:.0f} s |',
                flush=True,
            )
        print('\nper-class IoU:')
        classes = list(next(iter(res.values()))['class_iou'])
        print('| model | ' + ' | '.join(classes) + ' |\n|---|' + '---|' * len(classes))
        for case, r in res.items():
            print(f'| {QUALITY_CASES[case][1]} | ' + ' | '.join(f'{r["class_iou"][c]:.2f}' for c in classes) + ' |')
        print()
        for a, b in QUALITY_DIFFS:
            if a in res and b in res:
                x, y = res[a], res[b]
                print(
                    f'{QUALITY_CASES[a][1]} - {QUALITY_CASES[b][1]}: mIoU {x["mIoU"] - y["mIoU"]:+.2f}, '
                    f'thin IoU {x["thin_iou"] - y["thin_iou"]:+.2f}, bF {x["bF"] - y["bF"]:+.2f}; '
                    f'train time ratio {x["train_s"] / y["train_s"]:.2f}x'
                )
    if args.only in (None, 'overhead'):
        print(f'\n## overhead: ViT-S/16 at {args.size}^2, batch {args.batch}, {args.device}, median of {args.repeats}')
        print('| head | pass | bilinear | FeatUpJBU | time ratio | bilinear peak | FeatUpJBU peak | memory ratio |')
        print('|---|---|---|---|---|---|---|---|')
        for head, path in VIT.items():
            for mode in ('train', 'infer'):
                r = {
                    neck: run_case(
                        'overhead',
                        dict(
                            config=path.format(neck),
                            device=args.device,
                            mode=mode,
                            size=args.size,
                            batch=args.batch,
                            repeats=args.repeats,
                        ),
                    )
                    for neck in ('bilinear', 'featup')
                }
                b, f = r['bilinear'], r['featup']
                print(
                    f'| {head} | {mode} | {b["time"] * 1e3:.0f} ms | {f["time"] * 1e3:.0f} ms | '
                    f'{f["time"] / b["time"]:.2f}x | {b["peak_mib"]:.0f} MiB | {f["peak_mib"]:.0f} MiB | '
                    f'{f["peak_mib"] / max(b["peak_mib"], 1e-9):.2f}x |',
                    flush=True,
                )
        print(
            '\n| model | pass | FCN + bilinear | model | time ratio | FCN + bilinear peak | model peak | '
            'memory ratio |\n|---|---|---|---|---|---|---|---|'
        )
        for name, path in SFT_VIT.items():
            for mode in ('train', 'infer'):
                spec = dict(device=args.device, mode=mode, size=args.size, batch=args.batch, repeats=args.repeats)
                b = run_case('overhead', dict(spec, config=VIT['fcn (stride 4)'].format('bilinear')))
                f = run_case('overhead', dict(spec, config=path))
                print(
                    f'| {name} | {mode} | {b["time"] * 1e3:.0f} ms | {f["time"] * 1e3:.0f} ms | '
                    f'{f["time"] / b["time"]:.2f}x | {b["peak_mib"]:.0f} MiB | {f["peak_mib"]:.0f} MiB | '
                    f'{f["peak_mib"] / max(b["peak_mib"], 1e-9):.2f}x |',
                    flush=True,
                )


if __name__ == '__main__':
    main()
