"""torch.compile against eager, in one run: the JBU stack alone and the CPU main job's training step.

    python3 tools/benchmarks/benchmark_compile.py                    # CPU, both parts
    python3 tools/benchmarks/benchmark_compile.py --only stack --repeats 10
    python3 tools/benchmarks/benchmark_compile.py --device cuda

stack: ``JBUStack(--channels)`` forward + backward (train mode), ``--feat`` x ``--feat`` features of batch 1 to x16
       guided by a random image, eager vs ``torch.compile(stack, fullgraph=True)`` (inductor); then the same stack
       in eval mode, forward only under ``torch.no_grad()`` (inference).
main:  one ``train_step`` (data preprocessor, forward, loss, backward, AdamW step) of the main job's model
       (configs/synthetic/fcn_r18_featup_1xb8-400i_featup-synth-128x128.py, the plain-CE base of the main job: the
       same half-width ResNet-18 + FeatUpJBU + FCN, batch 8 of 128x128; the main job only adds class weights),
       eager vs ``torch.compile(model.train_step)``: what mmengine's ``compile=True`` does
       (graph breaks allowed, default options).

Eager and compiled calls alternate (one of each per repeat) so that load from other processes on a shared machine
hits both alike; each figure is the median of ``--repeats`` after the warm-up calls (the first compiled call, the
compilation, is reported on its own). Prints one JSON line per part.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import statistics
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)
MAIN_JOB = os.path.join(ROOT, 'configs', 'synthetic', 'fcn_r18_featup_1xb8-400i_featup-synth-128x128.py')


def _timed(fn, sync):
    sync()
    t0 = time.perf_counter()
    fn()
    sync()
    return time.perf_counter() - t0


def _compare(eager_fn, compiled_fn, repeats, warmup, sync):
    t_compile = _timed(compiled_fn, sync)  # first compiled call: tracing and code generation
    for _ in range(warmup):
        eager_fn(), compiled_fn()
    eager, compiled = [], []
    for _ in range(repeats):
        eager.append(_timed(eager_fn, sync))
        compiled.append(_timed(compiled_fn, sync))
    e, c = statistics.median(eager), statistics.median(compiled)
    return dict(
        eager_s=round(e, 4), compiled_s=round(c, 4), speedup=round(e / c, 3), first_compiled_call_s=round(t_compile, 1)
    )


def bench_stack(args, device, sync):
    import torch

    from featup_plugin.upsamplers import JBUStack

    torch.manual_seed(0)
    stack = JBUStack(args.channels).to(device).train()
    src = torch.randn(1, args.channels, args.feat, args.feat, device=device, requires_grad=True)
    img = torch.randn(1, 3, 16 * args.feat, 16 * args.feat, device=device)
    compiled = torch.compile(stack, fullgraph=True)

    def step(model):
        return lambda: model(src, img).square().mean().backward()

    res = _compare(step(stack), step(compiled), args.repeats, args.warmup, sync)
    what = f'JBUStack({args.channels}) {args.feat}->{16 * args.feat}'
    out = [dict(part='stack', what=what + ' fwd+bwd, train mode', **res)]
    stack.eval()
    torch._dynamo.reset()
    compiled = torch.compile(stack, fullgraph=True)

    def infer(model):
        def run():
            with torch.no_grad():
                model(src, img)

        return run

    res = _compare(infer(stack), infer(compiled), args.repeats, args.warmup, sync)
    return out + [dict(part='stack_infer', what=what + ' forward, eval mode, no_grad', **res)]


def _main_job_batch(n, size, classes):
    import torch
    from mmengine.structures import PixelData
    from mmseg.structures import SegDataSample

    gen = torch.Generator().manual_seed(0)
    inputs, samples = [], []
    for _ in range(n):
        inputs.append(torch.randint(0, 256, (3, size, size), generator=gen, dtype=torch.uint8))
        s = SegDataSample()
        s.gt_sem_seg = PixelData(data=torch.randint(0, classes, (1, size, size), generator=gen))
        s.set_metainfo(dict(img_shape=(size, size), ori_shape=(size, size), pad_shape=(size, size)))
        samples.append(s)
    return dict(inputs=inputs, data_samples=samples)


def bench_main(args, device, sync):
    import torch
    from mmengine.config import Config
    from mmengine.logging import MMLogger
    from mmengine.optim import build_optim_wrapper
    from mmseg.registry import MODELS
    from mmseg.utils import register_all_modules

    import featup_plugin.mmseg  # noqa: F401

    register_all_modules()
    MMLogger.get_instance('benchmark_compile', log_level='WARNING')  # no per-parameter init log
    cfg = Config.fromfile(MAIN_JOB)
    torch.manual_seed(0)
    model = MODELS.build(cfg.model)
    model.init_weights()
    model.to(device).train()
    twin = copy.deepcopy(model)
    optim, optim_c = build_optim_wrapper(model, cfg.optim_wrapper), build_optim_wrapper(twin, cfg.optim_wrapper)
    data = _main_job_batch(cfg.train_dataloader.batch_size, 128, cfg.model.decode_head.num_classes)
    compiled_step = torch.compile(twin.train_step)
    res = _compare(
        lambda: model.train_step(copy.deepcopy(data), optim),
        lambda: compiled_step(copy.deepcopy(data), optim_c),
        args.repeats,
        args.warmup,
        sync,
    )
    return [dict(part='main', what='main job train_step, batch 8 of 128x128 (mmengine compile=True)', **res)]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--only', choices=('stack', 'main'), help='run one part')
    ap.add_argument('--device', default='cpu', choices=('cpu', 'cuda'))
    ap.add_argument('--repeats', type=int, default=10)
    ap.add_argument('--warmup', type=int, default=2, help='calls of each after the first compiled one')
    ap.add_argument('--channels', type=int, default=64, help='stack part: feature channels')
    ap.add_argument('--feat', type=int, default=8, help='stack part: feature map side (output 16x)')
    args = ap.parse_args(argv)

    import torch

    from featup_plugin.ops import backend_name

    sync = torch.cuda.synchronize if args.device == 'cuda' else (lambda: None)
    env = dict(torch=torch.__version__, backend=backend_name(), threads=torch.get_num_threads())
    env.update(cpu=platform.processor() or platform.machine(), cores=os.cpu_count())
    print(json.dumps(dict(part='env', **env)), flush=True)
    for part, fn in (('stack', bench_stack), ('main', bench_main)):
        if args.only in (None, part):
            for line in fn(args, torch.device(args.device), sync):
                print(json.dumps(line), flush=True)


if __name__ == '__main__':
    main()
