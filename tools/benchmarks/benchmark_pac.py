"""PAC: speed and memory of PacConv2d (``--task op``, default), and what the PAC modules buy in segmentation
(``--task seg``).

    python tools/benchmarks/benchmark_pac.py     # CPU: C in {64, 256}, 128x128, k in {3, 5}, forward+backward
    python tools/benchmarks/benchmark_pac.py --device cuda   # the same on a GPU
    python tools/benchmarks/benchmark_pac.py --quick         # C=64, k=3 only
    python tools/benchmarks/benchmark_pac.py --task seg      # segmentation on the generated data (CPU, ~15 min)
    python tools/benchmarks/benchmark_pac.py --task seg --quick   # smoke test of the same (tiny data, 2 iterations)

--task op: each case is a PacConv2d(C, C, k, padding=k//2) layer, batch 1, Gaussian kernel from a 3-channel guidance:
forward, then backward of a fixed output gradient into the input, the guidance and the weight. All three
implementations compute the same adapting kernel (pac_kernel2d) and differ only in the convolution:
``ours`` = the compiled tiled implicit GEMM (featup_plugin._ext), ``taps`` = the pure-PyTorch tap loop
(FEATUP_OPS=reference), ``unfold`` = F.unfold + einsum (what the original PAC code does).
Every case runs in a fresh subprocess, so its peak memory is its own: on CPU the peak resident set above the
resident set after the inputs were made, on CUDA ``torch.cuda.max_memory_allocated`` above the inputs.
Times are the best of ``--repeats`` runs after one warm-up (memory is measured after the warm-up too, with
glibc's mmap threshold fixed at 1 MiB so that freed blocks leave the resident set). Ratios are unfold / ours from
this one run.

--task seg: the CPU configs of configs/synthetic (half-width ResNet-18, FCN head) on the generated dataset, every
model trained in a fresh process with the same data, data order and seed:
  base:        the bilinear model (ResizeNeck to stride 4 + FCN) trained --base-iters from scratch;
  (a) + (b):   that checkpoint fine-tuned --finetune-iters more, three ways with the same schedule (AdamW 5e-4,
               poly decay): as is; PAC hot-swapped (fcn_r18_pac-hotswap: backbone.layer4.1.conv1/conv2 and the
               FCN conv guided by the image); with a PAC-CRF on the FCN head (fcn-paccrf_r18_bilinear, 5
               mean-field iterations at the image resolution);
  (c):         the bilinear, FeatUpJBU and PacJointUpsampler necks, each trained --base-iters from scratch (the
               bilinear one is the base model).
Reported on the validation split: mIoU, thin-class IoU (mean IoU of wire, pole, vine), boundary F-score (bF, 2
px); and the cost of one training step (forward, backward, optimiser) of each network, measured apart in one
process with the five networks' steps interleaved over --cost-rounds rounds on the same batch (so that a changing
load on a shared machine hits all alike): medians of the wall time, the CPU time and the peak RSS above the
resident set before the step (glibc's mmap threshold at 1 MiB), with time and memory ratios against the row each
comparison is made with. (Per-iteration times inside the training runs are kept in results.json as
step_s / step_cpu_s / peak_mib; on a shared machine they vary by several times between identical networks.)
"""

from __future__ import annotations

import argparse
import json
import os
import time

from _bench import ROOT, fmt_t, print_header, run_case, time_and_peak  # tools/benchmarks/_bench.py, beside it


def worker(spec: dict) -> dict:
    import torch

    from featup_plugin.ops import backend_name, pac
    from featup_plugin.ops.pac_reference import pac_conv2d_unfold

    torch.manual_seed(0)
    dev, c, s, k = spec['device'], spec['C'], spec['size'], spec['k']
    layer = pac.PacConv2d(c, c, k, padding=k // 2).to(dev)
    x = torch.randn(1, c, s, s, device=dev, requires_grad=True)
    g = torch.randn(1, 3, s, s, device=dev, requires_grad=True)
    go = torch.randn(1, c, s, s, device=dev)
    if spec['impl'] == 'taps':
        pac._use_compiled = lambda t: False

    def run():
        x.grad = g.grad = layer.weight.grad = layer.bias.grad = None
        if spec['impl'] == 'unfold':
            kern = layer.compute_kernel(g)
            out = pac_conv2d_unfold(
                x, kern, layer.weight, layer.bias, layer.kernel_size, layer.stride, layer.padding, layer.dilation
            )
        else:
            out = layer(x, g)
        out.backward(go)
        return out

    run()  # warm-up: loads the BLAS / OpenMP code and creates the gradient buffers outside the measurement
    x.grad = g.grad = layer.weight.grad = layer.bias.grad = None
    times, peak = time_and_peak(run, spec['repeats'], dev == 'cuda', reset_rss_peak=True)
    return dict(spec, seconds=min(times), peak_mib=peak, backend=backend_name(), threads=torch.get_num_threads())


# -- task seg -----------------------------------------------------------------------------------------------
SYNTH = os.path.join(ROOT, 'configs', 'synthetic')
SEG_CASES = {  # name: (config, fine-tune from the base checkpoint?, label)
    'base': ('fcn_r18_bilinear_1xb8-400i_featup-synth-128x128.py', False, 'FCN + bilinear (base)'),
    'ft': ('fcn_r18_bilinear_1xb8-400i_featup-synth-128x128.py', True, 'base + fine-tune'),
    'ft_hotswap': ('fcn_r18_pac-hotswap_1xb8-200i_featup-synth-128x128.py', True, 'base + PAC hot-swap + fine-tune'),
    'ft_crf': ('fcn-paccrf_r18_bilinear_1xb8-400i_featup-synth-128x128.py', True, 'base + PAC-CRF + fine-tune'),
    'featup': ('fcn_r18_featup_1xb8-400i_featup-synth-128x128.py', False, 'FCN + FeatUpJBU'),
    'pacjoint': ('fcn_r18_pacjoint_1xb8-400i_featup-synth-128x128.py', False, 'FCN + PacJointUpsampler'),
}
FINETUNE_LR = 5e-4


def _evaluate(runner) -> dict:
    """mIoU, per-class IoU, thin-class IoU and bF of the runner's model on its validation split."""
    import numpy as np
    import torch
    from mmseg.evaluation.metrics import IoUMetric
    from mmseg.registry import METRICS

    from featup_plugin.data.synthetic import THIN_CLASSES

    loader = runner.val_dataloader
    iou, bf = IoUMetric(iou_metrics=['mIoU']), METRICS.build(dict(type='BoundaryFScore', tolerance=2))
    iou.dataset_meta = bf.dataset_meta = loader.dataset.metainfo
    model = runner.model
    model.eval()
    with torch.no_grad():
        for data in loader:
            outs = [o.to_dict() for o in model.val_step(data)]
            iou.process(data, outs)
            bf.process(data, outs)
    inter = sum(r[0] for r in iou.results).double()
    union = sum(r[1] for r in iou.results).double()
    per_class = (inter / union).numpy() * 100  # nan for classes absent from both prediction and label
    return dict(
        mIoU=float(np.nanmean(per_class)),
        thin_IoU=float(np.nanmean(per_class[list(THIN_CLASSES)])),
        bF=float(bf.compute_metrics(bf.results)['bF']),
        per_class=[None if np.isnan(v) else float(v) for v in per_class],
    )


def _step_watch(warmup: int):
    """A hook that times the training iterations after ``warmup`` (forward, backward, optimiser; data loading
    excluded), in wall time and in CPU time of the process (all threads: less sensitive to other jobs on a shared
    machine), and measures their peak resident set above the resident set before them (VmHWM reset then)."""
    from _bench import hwm_rss_mib, reset_peak_rss, rss_mib
    from mmengine.hooks import Hook

    class StepWatch(Hook):
        def __init__(self):
            self.times, self.cpu_times, self.base, self.peak_mib = [], [], None, None

        def before_train_iter(self, runner, batch_idx, data_batch=None):
            if runner.iter == warmup:
                self.base = rss_mib()
                reset_peak_rss()
            self.t0, self.c0 = time.perf_counter(), time.process_time()

        def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None):
            if runner.iter >= warmup:
                self.times.append(time.perf_counter() - self.t0)
                self.cpu_times.append(time.process_time() - self.c0)

        def after_train(self, runner):
            self.peak_mib = hwm_rss_mib() - self.base

    return StepWatch()


def seg_worker(spec: dict) -> dict:
    import statistics

    import torch
    from mmengine.config import Config
    from mmengine.runner import Runner
    from mmseg.utils import register_all_modules

    import featup_plugin  # noqa: F401
    from featup_plugin.data.prepare import prepare_generated_datasets
    from featup_plugin.mmseg.engine import use_mmengine_checkpoint_loader

    register_all_modules()
    use_mmengine_checkpoint_loader()  # load_from reads mmengine's own checkpoints (torch.load weights_only)
    cfg = Config.fromfile(os.path.join(SYNTH, spec['config']))
    root, iters = spec['data_root'], spec['iters']
    cfg.synthetic_data.update(root=root, num_train=spec['num_train'], num_val=spec['num_val'], size=spec['size'])
    for loader in (cfg.train_dataloader, cfg.val_dataloader, cfg.test_dataloader):
        loader.dataset.data_root = root
        loader.num_workers, loader.persistent_workers = 0, False
    cfg.train_dataloader.batch_size = spec['batch']
    cfg.train_cfg = dict(type='IterBasedTrainLoop', max_iters=iters, val_interval=iters + 1)  # evaluated below
    poly = dict(type='PolyLR', eta_min=1e-5, power=0.9, by_epoch=False)
    if spec['finetune']:
        cfg.load_from, cfg.resume = spec['load_from'], False
        cfg.optim_wrapper.optimizer.lr = FINETUNE_LR
        cfg.param_scheduler = [dict(poly, begin=0, end=iters)]
    else:
        warm = max(1, iters // 20)
        cfg.param_scheduler = [
            dict(type='LinearLR', start_factor=0.1, by_epoch=False, begin=0, end=warm),
            dict(poly, begin=warm, end=iters),
        ]
    cfg.default_hooks.checkpoint = dict(type='CheckpointHook', by_epoch=False, interval=iters, max_keep_ckpts=1)
    cfg.default_hooks.logger.interval = max(1, iters // 5)
    cfg.randomness = dict(seed=spec['seed'])
    cfg.work_dir = spec['work_dir']
    prepare_generated_datasets(cfg)
    runner = Runner.from_cfg(cfg)
    watch = _step_watch(warmup=min(2, iters - 1))
    runner.register_hook(watch, priority='LOWEST')
    t0 = time.perf_counter()
    runner.train()
    train_s = time.perf_counter() - t0
    res = _evaluate(runner)
    res.update(
        train_s=train_s,
        step_s=statistics.median(watch.times),
        step_cpu_s=statistics.median(watch.cpu_times),
        peak_mib=watch.peak_mib,
        checkpoint=os.path.join(spec['work_dir'], f'iter_{iters}.pth'),
        threads=torch.get_num_threads(),
        cpu_s=time.process_time(),
    )
    return res


COST_CASES = ('base', 'ft_hotswap', 'ft_crf', 'featup', 'pacjoint')  # 'ft' is the base's network


def cost_worker(spec: dict) -> dict:
    """Training-step cost of every network in one process, interleaved: ``rounds`` times, one step of each model
    in turn on the same batch (after a warm-up step each), so that a changing load on a shared machine hits all
    of them alike. Per model: medians of the wall and CPU time, and of the peak RSS above the resident set before
    the step."""
    import statistics

    import torch
    from _bench import hwm_rss_mib, reset_peak_rss, rss_mib
    from mmengine.config import Config
    from mmengine.optim import build_optim_wrapper
    from mmengine.runner import Runner
    from mmseg.registry import MODELS
    from mmseg.utils import register_all_modules

    import featup_plugin  # noqa: F401

    register_all_modules()
    torch.manual_seed(spec['seed'])
    models = {}
    for case in COST_CASES:
        cfg = Config.fromfile(os.path.join(SYNTH, SEG_CASES[case][0]))
        model = MODELS.build(cfg.model)
        model.init_weights()
        model.train()
        models[case] = (model, build_optim_wrapper(model, cfg.optim_wrapper))
    loader = cfg.train_dataloader
    loader.dataset.data_root = spec['data_root']
    loader.batch_size, loader.num_workers, loader.persistent_workers = spec['batch'], 0, False
    batch = next(iter(Runner.build_dataloader(loader, seed=spec['seed'])))
    out = {case: dict(wall=[], cpu=[], peak=[]) for case in COST_CASES}
    for model, optim in models.values():
        model.train_step(batch, optim)  # warm-up: gradients and optimiser state exist from here on
    for _ in range(spec['rounds']):
        for case, (model, optim) in models.items():
            base = rss_mib()
            reset_peak_rss()
            t, c = time.perf_counter(), time.process_time()
            model.train_step(batch, optim)
            out[case]['wall'].append(time.perf_counter() - t)
            out[case]['cpu'].append(time.process_time() - c)
            out[case]['peak'].append(hwm_rss_mib() - base)
    return {case: {k: statistics.median(v) for k, v in d.items()} for case, d in out.items()}


def run_seg(args) -> None:
    if args.quick:
        size, num_train, num_val, batch, m, n, rounds = 64, 4, 2, 2, 2, 1, 1
    else:
        size, num_train, num_val, batch = args.image_size, args.num_train, args.num_val, args.batch
        m, n, rounds = args.base_iters, args.finetune_iters, args.cost_rounds
    print_header('PAC in segmentation', 'cpu')
    print(
        f'\nsettings: generated data {num_train} train / {num_val} val images of {size}x{size}, batch {batch}, '
        f'seed {args.seed}; base and neck models {m} iterations from scratch, fine-tunes {n} iterations '
        f'(AdamW lr {FINETUNE_LR:g}, poly) from the base checkpoint; step cost: median of {rounds} interleaved '
        'rounds in one process',
        flush=True,
    )
    t_start = time.perf_counter()
    res = {}
    for case, (config, finetune, label) in SEG_CASES.items():
        spec = dict(
            task='seg',
            config=config,
            finetune=finetune,
            load_from=res['base']['checkpoint'] if finetune else None,
            data_root=args.data_root,
            num_train=num_train,
            num_val=num_val,
            size=size,
            batch=batch,
            iters=n if finetune else m,
            seed=args.seed,
            work_dir=os.path.join(args.work_dir, case),
        )
        res[case] = run_pac_case(spec)
        r = res[case]
        print(
            f'  {label}: mIoU {r["mIoU"]:.2f}, thin IoU {r["thin_IoU"]:.2f}, bF {r["bF"]:.2f}, '
            f'train {r["train_s"]:.0f} s',
            flush=True,
        )

    cost = run_pac_case(dict(task='cost', data_root=args.data_root, batch=batch, rounds=rounds, seed=args.seed))
    cost['ft'] = cost['base']
    res['cost'] = cost
    print(f'  step cost measured ({rounds} interleaved rounds)', flush=True)

    def table(title, rows, ref):
        print(f'\n### {title}\n')
        print(
            '| model | mIoU | thin IoU | bF (2 px) | step (wall) | step (CPU) | peak mem | time ratio | memory ratio |'
        )
        print('|---|---|---|---|---|---|---|---|---|')
        b, cb = res[ref], cost[ref]
        for case in rows:
            r, c = res[case], cost[case]
            mem = f'{c["peak"] / cb["peak"]:.2f}x' if cb['peak'] >= 1 else 'n/a'
            print(
                f'| {SEG_CASES[case][2]} | {r["mIoU"]:.2f} | {r["thin_IoU"]:.2f} | {r["bF"]:.2f} | '
                f'{fmt_t(c["wall"])} | {fmt_t(c["cpu"])} | {c["peak"]:.0f} MiB | '
                f'{c["wall"] / cb["wall"]:.2f}x | {mem} |'
            )
        for case in rows:
            if case != ref:
                r = res[case]
                print(
                    f'\n{SEG_CASES[case][2]} - {SEG_CASES[ref][2]}: mIoU {r["mIoU"] - b["mIoU"]:+.2f}, '
                    f'thin IoU {r["thin_IoU"] - b["thin_IoU"]:+.2f}, bF {r["bF"] - b["bF"]:+.2f}',
                    end='',
                )
        print()

    table(
        f'(a) PAC hot-swap: fine-tune {n} iterations from the base ({m} iterations)', ['base', 'ft', 'ft_hotswap'], 'ft'
    )
    table(f'(b) PAC-CRF: fine-tune {n} iterations from the base', ['ft', 'ft_crf'], 'ft')
    table(f'(c) necks, {m} iterations from scratch', ['base', 'featup', 'pacjoint'], 'base')
    from featup_plugin.data.synthetic import CLASSES

    print('\nper-class IoU:\n\n| model | ' + ' | '.join(CLASSES) + ' |\n|---|' + '---|' * len(CLASSES))
    for case in SEG_CASES:
        vals = ['-' if v is None else f'{v:.1f}' for v in res[case]['per_class']]
        print(f'| {SEG_CASES[case][2]} | ' + ' | '.join(vals) + ' |')
    os.makedirs(args.work_dir, exist_ok=True)
    with open(os.path.join(args.work_dir, 'results.json'), 'w') as f:
        json.dump(res, f, indent=1)
    cpu = sum(res[case]['cpu_s'] for case in SEG_CASES)
    print(
        f'\ntotal {time.perf_counter() - t_start:.0f} s wall, {cpu:.0f} s CPU in the workers; results in '
        f'{os.path.join(args.work_dir, "results.json")}'
    )


def run_pac_case(spec: dict) -> dict:
    # A fixed mmap threshold: glibc returns every block >= 1 MiB to the OS when freed, so the resident set after
    # the warm-up is the inputs', not the warm-up's cached heap.
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_=str(2**20))
    return run_case(__file__, spec, env=env)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--task', default='op', choices=['op', 'seg'])
    ap.add_argument('--device', default='cpu', choices=['cpu', 'cuda'])
    ap.add_argument('--repeats', type=int, default=3, help='op: timed runs per case')
    ap.add_argument('--size', type=int, default=128, help='op: the map size')
    ap.add_argument('--quick', action='store_true', help='op: C=64, k=3 only; seg: tiny data, 2 + 1 iterations')
    seg = ap.add_argument_group('--task seg')
    seg.add_argument('--image-size', type=int, default=64)
    seg.add_argument('--num-train', type=int, default=200)
    seg.add_argument('--num-val', type=int, default=50)
    seg.add_argument('--batch', type=int, default=8)
    seg.add_argument('--base-iters', type=int, default=48)
    seg.add_argument('--finetune-iters', type=int, default=16)
    seg.add_argument('--cost-rounds', type=int, default=5, help='interleaved timing rounds of the step cost')
    seg.add_argument('--seed', type=int, default=0)
    seg.add_argument('--data-root', default=os.path.join(ROOT, 'data', 'featup_synth_pac_bench'))
    seg.add_argument('--work-dir', default=os.path.join(ROOT, 'work_dirs', 'benchmark_pac_seg'))
    ap.add_argument('--worker', help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        spec = json.loads(args.worker)
        task = spec.get('task')
        print(json.dumps(seg_worker(spec) if task == 'seg' else cost_worker(spec) if task == 'cost' else worker(spec)))
        return
    if args.task == 'seg':
        for name in ('image_size', 'num_train', 'num_val', 'batch', 'base_iters', 'finetune_iters', 'cost_rounds'):
            if getattr(args, name) < 1:
                ap.error(f'--{name.replace("_", "-")} must be >= 1')
        run_seg(args)
        return
    print_header('PacConv2d benchmark', args.device)
    cases = [(64, 3)] if args.quick else [(64, 3), (64, 5), (256, 3), (256, 5)]
    print(
        '\n| C | size | k | ours | taps fallback | unfold ref | speed-up vs unfold | ours peak extra | '
        'taps peak extra | unfold peak extra | unfold / ours mem |'
    )
    print('|---|---|---|---|---|---|---|---|---|---|---|')
    backend = None
    for c, k in cases:
        base = dict(C=c, size=args.size, k=k, device=args.device, repeats=args.repeats)
        r = {impl: run_pac_case(dict(base, impl=impl)) for impl in ('ours', 'taps', 'unfold')}
        backend = r['ours']['backend']
        o, t, u = r['ours'], r['taps'], r['unfold']
        print(
            f'| {c} | {args.size}² | {k} | {fmt_t(o["seconds"])} | {fmt_t(t["seconds"])} | {fmt_t(u["seconds"])} | '
            f'{u["seconds"] / o["seconds"]:.2f}× | {o["peak_mib"]:.0f} MiB | {t["peak_mib"]:.0f} MiB | '
            f'{u["peak_mib"]:.0f} MiB | {u["peak_mib"] / max(o["peak_mib"], 1):.1f}× |',
            flush=True,
        )
    print(f'\nours: {backend}; forward+backward (input, guidance and weight gradients), batch 1')


if __name__ == '__main__':
    main()
