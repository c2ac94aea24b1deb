"""Speed and memory of the JBU op against the unfold reference, and of the whole JBU stack.

    python tools/benchmarks/benchmark_ops.py                 # CPU, the issue's table (the reference takes minutes)
    python tools/benchmarks/benchmark_ops.py --device cuda   # the same on a GPU
    python tools/benchmarks/benchmark_ops.py --quick         # small sizes only (a smoke run)
    python tools/benchmarks/benchmark_ops.py --only ratios   # issue 16 §3: throughput as ratios of this run's SGEMM
    python tools/benchmarks/benchmark_ops.py --only transpose   # the op's input gradient: transposed kernel vs
                                                                # the forward on flipped / padded copies

The ratio tables (printed first, also by a plain run): the SGEMM rate of this machine (``torch.mm`` 2048², all
threads), each op's forward and backward at C ∈ {64, 384}, 224², k ∈ {3, 7} as % of it (2·k²·C·H·W FLOP per
op call; a backward makes two such calls, the input and the filter gradient), and ``JBUStack(C)`` 14² → 224²
forward and forward+backward as multiples of its FLOP floor (the itemised FLOP count at the SGEMM rate; the
backward counted as twice the forward) with the peak extra memory, once with the default CPU allocator and once
with ``featup_plugin.ops.enable_cpu_cache()``. The stack's backward is ``out.backward(G)`` with a fixed random
``G`` (before 2026-12-01 21:00 it was ``out.square().mean().backward()``, whose elementwise work on the
``[1, C, 224, 224]`` output, ~8% of the time, the FLOP floor does not count).

Every case runs in a fresh subprocess so that its peak memory is its own: on CPU the resident-set high-water
mark (VmHWM, reset once the inputs are made: ``ru_maxrss`` would carry the parent's peak across fork/exec) above
the resident set after the inputs were made; on CUDA ``torch.cuda.max_memory_allocated``
above the inputs. Times are the best of ``--repeats`` runs after one warm-up (reference: one run at the large
sizes). Ratios are reference / ours, measured in this one run.
"""

from __future__ import annotations

import argparse
import json

from _bench import fmt_t, print_header, run_case, time_and_peak  # tools/benchmarks/_bench.py, beside this script


def worker(spec: dict) -> dict:
    import torch

    import featup_plugin.ops as ops
    from featup_plugin.ops import reference

    torch.manual_seed(0)
    dev = spec['device']
    if spec.get('cpu_cache'):  # featup_plugin.ops.enable_cpu_cache: freed large blocks reused, not faulted in again
        ops.enable_cpu_cache()

    if spec['kind'] == 'ratios':
        return ratio_worker(spec)
    if spec['kind'] == 'transpose':  # dX of the op alone: the transposed kernel or the flipped-copy formulation
        import importlib

        ac = importlib.import_module('featup_plugin.ops.adaptive_conv')  # the module, not the function
        from featup_plugin.ops import _backend

        _backend.get_ext()  # loads and registers the compiled module (which sets _HAS_TRANSPOSE_OP)
        if spec['impl'] == 'flip':
            ac._HAS_TRANSPOSE_OP = False
        elif not ac._HAS_TRANSPOSE_OP:
            raise RuntimeError('the loaded module has no featup::adaptive_conv_transpose (rebuild the extension)')
        b, c, s, k = spec['B'], spec['C'], spec['size'], spec['k']
        go = torch.randn(b, c, s, s, device=dev)
        kern = torch.softmax(torch.randn(b, k * k, s, s, device=dev), 1)

        def run():
            return ac._transpose(go, kern, k)
    elif spec['kind'] == 'op':
        c, s, k = spec['C'], spec['size'], spec['k']
        x = torch.randn(1, c, s + k - 1, s + k - 1, device=dev)
        f = torch.softmax(torch.randn(1, s, s, k * k, device=dev), -1).view(1, s, s, k, k)
        go = torch.randn(1, c, s, s, device=dev)
        fn = ops.adaptive_conv if spec['impl'] == 'ours' else reference.adaptive_conv_unfold

        def run():
            if spec['mode'] == 'fwd':
                with torch.no_grad():
                    return fn(x, f)
            xg, fg = x.detach().requires_grad_(), f.detach().requires_grad_()
            fn(xg, fg).backward(go)
            return xg.grad, fg.grad
    else:  # the whole JBU stack, 14x14 features -> 224x224
        from featup_plugin.upsamplers import JBUStack, jbu

        if spec['impl'] == 'unfold':  # FeatUp's formulation: unfold both the keys and the features
            jbu.adaptive_conv = reference.adaptive_conv_unfold
            jbu.local_correlation = reference.local_correlation_unfold
        if spec.get('flip'):  # the input gradients by the forward on flipped / padded copies (before the transposed op)
            import importlib

            from featup_plugin.ops import _backend

            _backend.get_ext()
            importlib.import_module('featup_plugin.ops.adaptive_conv')._HAS_TRANSPOSE_OP = False
        c = spec['C']
        stack = JBUStack(c).to(dev).eval()
        src = torch.randn(1, c, 14, 14, device=dev)
        img = torch.rand(1, 3, 224, 224, device=dev)

        go = torch.randn(1, c, 224, 224, device=dev)  # a fixed output gradient: the stack's backward, no loss

        def run():
            if spec['mode'] == 'fwd':
                with torch.no_grad():
                    return stack(src, img)
            stack.zero_grad(set_to_none=True)
            out = stack(src, img)
            out.backward(go)
            return out

    backend = ops.backend_name()
    times, peak = time_and_peak(
        run,
        spec['repeats'] + 1,
        dev == 'cuda',  # the first call is the warm-up
        reset_rss_peak=True,
    )
    best = min(times[1:]) if len(times) > 1 else times[0]
    return dict(spec, seconds=best, peak_mib=peak, backend=backend, threads=torch.get_num_threads())


def _sgemm_gflops(dev: str) -> float:
    import time

    import torch

    n = 2048
    a, b = torch.randn(n, n, device=dev), torch.randn(n, n, device=dev)
    best = float('inf')
    for _ in range(6):
        if dev == 'cuda':
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        torch.mm(a, b)
        if dev == 'cuda':
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best / 1e9


def _copy_gbs(dev: str) -> float:
    """Memory bandwidth: bytes read + written per second by a copy of a 256 MiB tensor into a reused buffer."""
    import time

    import torch

    a = torch.randn(2**26, device=dev)
    b = torch.empty_like(a)
    best = float('inf')
    for _ in range(4):
        if dev == 'cuda':
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        b.copy_(a)
        if dev == 'cuda':
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t0)
    return 2 * a.numel() * 4 / best / 1e9


def _best(fn, repeats: int, dev: str, setup=None) -> float:
    import time

    import torch

    best = float('inf')
    for _ in range(repeats + 1):  # the first is a warm-up
        state = setup() if setup is not None else None
        if dev == 'cuda':
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        res = fn(state)
        if dev == 'cuda':
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t0)
        del res, state
    return best


def ratio_worker(spec: dict) -> dict:
    """All op cases of the ratio table in one process, with the SGEMM rate measured before and after."""
    import torch

    import featup_plugin.ops as ops

    torch.manual_seed(0)
    dev, reps = spec['device'], spec['repeats']
    sgemm = [_sgemm_gflops(dev)]
    copy = _copy_gbs(dev)
    rows = []
    for c in spec['channels']:
        for k in (3, 7):
            s = spec['size']
            p = k - 1
            x = torch.randn(1, c, s + p, s + p, device=dev)
            g = torch.randn(1, c, s, s, device=dev)
            f = torch.softmax(torch.randn(1, s, s, k * k, device=dev), -1).view(1, s, s, k, k)
            go_conv = torch.randn(1, c, s, s, device=dev)
            go_corr = torch.randn(1, k * k, s, s, device=dev)
            cases = {
                'adaptive_conv': (lambda a, b: ops.adaptive_conv(a, b), (x, f), go_conv),
                'local_correlation': (lambda a, b: ops.local_correlation(a, b), (g, x), go_corr),
            }
            for name, (fn, args, go) in cases.items():
                with torch.no_grad():
                    t_fwd = _best(lambda _: fn(*args), reps, dev)

                def setup(fn=fn, args=args):
                    leaves = [a.detach().requires_grad_() for a in args]
                    return leaves, fn(*leaves)

                def bwd(state, go=go):
                    leaves, out = state
                    return torch.autograd.grad(out, leaves, go)

                t_bwd = _best(bwd, reps, dev, setup)
                flop = 2 * k * k * c * s * s
                # the least memory traffic of one call: both inputs read once, the output written once (fp32)
                nbytes = 4 * (sum(a.numel() for a in args) + (c if name == 'adaptive_conv' else k * k) * s * s)
                rows.append(dict(op=name, C=c, k=k, size=s, fwd=t_fwd, bwd=t_bwd, flop=flop, bytes=nbytes))
    sgemm.append(_sgemm_gflops(dev))
    return dict(sgemm=sgemm, copy=copy, rows=rows, backend=ops.backend_name(), threads=torch.get_num_threads())


def stack_flops(c: int, stage_sizes, in_size, key_dim: int = 32, taps: int = 49, guidance: int = 3) -> dict:
    """FLOPs of a JBUStack(c) forward (fuse_fixup, the default): 2 per multiply-add, elementwise work excluded."""
    items = dict.fromkeys(('range MLP', 'correlation', 'fixup convs', 'bicubic taps', 'adaptive conv', 'final 1x1'), 0)
    prev = in_size
    for h, w in stage_sizes:
        hw = h * w
        items['range MLP'] += 2 * hw * (guidance * key_dim + key_dim * key_dim)
        items['correlation'] += 2 * hw * taps * key_dim
        items['fixup convs'] += 2 * hw * ((taps + guidance) * taps + taps * taps)
        items['bicubic taps'] += 2 * c * (prev[0] * 4 * w + 4 * hw)  # separable: 4 taps along W, then 4 along H
        items['adaptive conv'] += 2 * hw * taps * c
        prev = (h, w)
    h, w = stage_sizes[-2] if len(stage_sizes) > 1 else in_size  # the fused fixup runs on the last stage's input
    items['final 1x1'] = 2 * h * w * c * c
    return items


def print_ratios(args) -> None:
    """Issue 16 §3: op and stack throughput as ratios of the SGEMM rate measured in this run."""
    s = 112 if args.quick else 224
    channels = [64] if args.quick else [64, 384]
    res = run_case(
        __file__,
        dict(
            kind='ratios',
            device=args.device,
            repeats=args.repeats,
            size=s,
            channels=channels,
            cpu_cache=args.cpu_cache,
        ),
    )
    sgemm = max(res['sgemm'])
    print(
        f'\nSGEMM (torch.mm 2048², {res["threads"]} threads): {sgemm:.0f} GFLOP/s '
        f'(before / after the op cases: {res["sgemm"][0]:.0f} / {res["sgemm"][1]:.0f}); op backend: {res["backend"]}; '
        f'op cases with the caching CPU allocator: {"yes" if args.cpu_cache else "no"}\n'
    )
    print(
        f'memory: a 256 MiB copy moves {res["copy"]:.1f} GB/s (read + write). "fwd at 50%": the forward time at '
        'half the SGEMM rate; "mem floor": the forward\'s least traffic (inputs read once, output written once) '
        'at that copy rate\n'
    )
    print(
        '| op | C | k | out | fwd | fwd GFLOP/s | fwd % SGEMM | bwd | bwd GFLOP/s | bwd % SGEMM | fwd at 50% '
        '| mem floor |'
    )
    print('|---|---|---|---|---|---|---|---|---|---|---|---|')
    for r in res['rows']:
        gf, gb = r['flop'] / r['fwd'] / 1e9, 2 * r['flop'] / r['bwd'] / 1e9
        print(
            f'| {r["op"]} | {r["C"]} | {r["k"]} | {r["size"]}² | {fmt_t(r["fwd"])} | {gf:.0f} '
            f'| {100 * gf / sgemm:.0f}% '
            f'| {fmt_t(r["bwd"])} | {gb:.0f} | {100 * gb / sgemm:.0f}% | {fmt_t(r["flop"] / (0.5 * sgemm * 1e9))} '
            f'| {fmt_t(r["bytes"] / (res["copy"] * 1e9))} |'
        )
    c = 64 if args.quick else 384
    from featup_plugin.upsamplers.jbu import plan_stage_sizes

    sizes = plan_stage_sizes((14, 14), (224, 224))
    items = stack_flops(c, sizes, (14, 14))
    total = sum(items.values())
    floor = total / (sgemm * 1e9)
    print(f'\nJBUStack({c}) 14² → 224² forward FLOPs (stages {", ".join(f"{h}²" for h, _ in sizes)}):')
    print(', '.join(f'{name} {v / 1e9:.3f}' for name, v in items.items()) + f'; total {total / 1e9:.2f} GFLOP')
    print(f'floor at {sgemm:.0f} GFLOP/s: forward {fmt_t(floor)}, forward+backward (3× the forward) {fmt_t(3 * floor)}')
    print()
    print('| pass | CPU allocator | time | × FLOP floor | target | peak extra |')
    print('|---|---|---|---|---|---|')
    import featup_plugin.ops as ops

    # (a tree from before the caching allocator has no enable_cpu_cache: its default rows only)
    caches = (False, True) if args.device == 'cpu' and hasattr(ops, 'enable_cpu_cache') else (False,)
    for mode, mult, target in (('fwd', 1, 3), ('fwd+bwd', 3, 4)):
        for cache in caches:
            spec = dict(kind='stack', C=c, mode=mode, device=args.device, impl='ours', repeats=args.repeats)
            r = run_case(__file__, dict(spec, cpu_cache=cache))
            x = r['seconds'] / (mult * floor)
            print(
                f'| {mode} | {"caching (enable_cpu_cache)" if cache else "default"} | {fmt_t(r["seconds"])} | '
                f'{x:.1f}× | ≤ {target}× {"met" if x <= target else "not met"} | {r["peak_mib"]:.0f} MiB |',
                flush=True,
            )


def print_transpose(args) -> None:
    """The op's input gradient T(G, K) (adaptive_conv's dX; also local_correlation's d/dpadded): the transposed
    kernel reading the taps in place vs the forward kernel on pad(G) and flip_taps(K), time and peak extra memory
    (above the inputs; the [B, C, H+k-1, W+k-1] result is part of both)."""
    cases = [(1, 64, 112, 7)] if args.quick else [(1, 64, 224, 3), (1, 64, 224, 7), (1, 384, 224, 3), (1, 384, 224, 7)]
    cases += [] if args.quick else [(4, 384, 224, 7)]
    print(
        '\n| B | C | size | k | transposed | flip + pad | time ratio | transposed peak | flip peak | result | '
        'memory ratio |'
    )
    print('|---|---|---|---|---|---|---|---|---|---|---|')
    for b, c, s, k in cases:
        base = dict(kind='transpose', B=b, C=c, size=s, k=k, device=args.device, repeats=args.repeats)
        ours = run_case(__file__, dict(base, impl='transposed'))
        flip = run_case(__file__, dict(base, impl='flip'))
        result = b * c * (s + k - 1) ** 2 * 4 / 2**20
        print(
            f'| {b} | {c} | {s}² | {k} | {fmt_t(ours["seconds"])} | {fmt_t(flip["seconds"])} | '
            f'{flip["seconds"] / ours["seconds"]:.2f}× | {ours["peak_mib"]:.0f} MiB | {flip["peak_mib"]:.0f} MiB | '
            f'{result:.0f} MiB | {flip["peak_mib"] / max(ours["peak_mib"], 1):.2f}× |',
            flush=True,
        )
    c = 64 if args.quick else 384
    base = dict(kind='stack', C=c, mode='fwd+bwd', device=args.device, impl='ours', repeats=args.repeats)
    ours = run_case(__file__, base)
    flip = run_case(__file__, dict(base, flip=True))
    print(f'\nJBUStack({c}) 14² → 224², forward + backward:\n')
    print('| input gradients by | time | peak extra |')
    print('|---|---|---|')
    print(f'| the transposed op | {fmt_t(ours["seconds"])} | {ours["peak_mib"]:.0f} MiB |')
    print(f'| flip_taps + padded copy | {fmt_t(flip["seconds"])} | {flip["peak_mib"]:.0f} MiB |')
    print(
        f'\nflip / transposed: time {flip["seconds"] / ours["seconds"]:.2f}×, '
        f'peak {flip["peak_mib"] / max(ours["peak_mib"], 1):.2f}×; op backend: {ours["backend"]}'
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--device', default='cpu', choices=['cpu', 'cuda'])
    ap.add_argument('--repeats', type=int, default=3)
    ap.add_argument('--quick', action='store_true', help='C=64 at 112^2 and a 64-channel stack only')
    ap.add_argument('--no-reference', action='store_true', help='time ours only')
    ap.add_argument('--only', choices=['ratios', 'op', 'stack', 'transpose'], help='run one of the tables')
    ap.add_argument(
        '--cpu-cache',
        action='store_true',
        help="run the ratio table's op cases with featup_plugin.ops.enable_cpu_cache() (the stack rows show both)",
    )
    ap.add_argument('--worker', help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        print(json.dumps(worker(json.loads(args.worker))))
        return

    print_header('featup_plugin op benchmark', args.device)
    if args.only == 'transpose':
        print_transpose(args)
        return
    if args.only in (None, 'ratios'):
        print_ratios(args)
        if args.only == 'ratios':
            return
    sizes = [(64, 112)] if args.quick else [(64, 112), (64, 224), (384, 112), (384, 224)]
    if args.only == 'stack':
        sizes = []
    if sizes:
        print('\n| C | out | k | pass | ours | unfold ref | speed-up | ours peak extra | ref peak extra | mem ratio |')
        print('|---|---|---|---|---|---|---|---|---|---|')
    backend = None
    for c, s in sizes:
        for mode in ('fwd', 'fwd+bwd'):
            base = dict(kind='op', C=c, size=s, k=7, mode=mode, device=args.device)
            ours = run_case(__file__, dict(base, impl='ours', repeats=args.repeats))
            backend = ours['backend']
            if args.no_reference:
                print(
                    f'| {c} | {s}² | 7 | {mode} | {fmt_t(ours["seconds"])} | - | - | '
                    f'{ours["peak_mib"]:.0f} MiB | - | - |'
                )
                continue
            big = c * s * s >= 384 * 112 * 112 and args.device == 'cpu'
            ref = run_case(__file__, dict(base, impl='reference', repeats=1 if big else args.repeats))
            print(
                f'| {c} | {s}² | 7 | {mode} | {fmt_t(ours["seconds"])} | {fmt_t(ref["seconds"])} | '
                f'{ref["seconds"] / ours["seconds"]:.1f}× | {ours["peak_mib"]:.0f} MiB | {ref["peak_mib"]:.0f} MiB | '
                f'{ref["peak_mib"] / max(ours["peak_mib"], 1):.1f}× |',
                flush=True,
            )
    c = 64 if args.quick else 384
    if args.only == 'op':
        print(f'\nop backend: {backend}')
        return
    print(f'\nJBUStack({c}), 14x14 features -> 224x224 (DINO ViT-S/16 at 224), eval mode:\n')
    print('| pass | ours | FeatUp-style unfold | speed-up | ours peak extra | unfold peak extra |')
    print('|---|---|---|---|---|---|')
    for mode in ('fwd', 'fwd+bwd'):
        base = dict(kind='stack', C=c, mode=mode, device=args.device)
        ours = run_case(__file__, dict(base, impl='ours', repeats=args.repeats))
        if args.no_reference:
            print(f'| {mode} | {fmt_t(ours["seconds"])} | - | - | {ours["peak_mib"]:.0f} MiB | - |')
            backend = ours['backend']
            continue
        backend = ours['backend']
        ref = run_case(__file__, dict(base, impl='unfold', repeats=1 if args.device == 'cpu' else args.repeats))
        print(
            f'| {mode} | {fmt_t(ours["seconds"])} | {fmt_t(ref["seconds"])} | '
            f'{ref["seconds"] / ours["seconds"]:.1f}× | '
            f'{ours["peak_mib"]:.0f} MiB | {ref["peak_mib"]:.0f} MiB |',
            flush=True,
        )
    print(f'\nop backend: {backend}')


if __name__ == '__main__':
    main()
