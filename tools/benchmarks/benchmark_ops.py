"""Speed and memory of the JBU op against the unfold reference, and of the whole JBU stack.

    python tools/benchmarks/benchmark_ops.py                 # CPU, the issue's table (the reference takes minutes)
    python tools/benchmarks/benchmark_ops.py --device cuda   # the same on a GPU
    python tools/benchmarks/benchmark_ops.py --quick         # small sizes only (a smoke run)

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

    if spec['kind'] == 'op':
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
        c = spec['C']
        stack = JBUStack(c).to(dev).eval()
        src = torch.randn(1, c, 14, 14, device=dev)
        img = torch.rand(1, 3, 224, 224, device=dev)

        def run():
            if spec['mode'] == 'fwd':
                with torch.no_grad():
                    return stack(src, img)
            stack.zero_grad(set_to_none=True)
            out = stack(src, img)
            out.square().mean().backward()
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--device', default='cpu', choices=['cpu', 'cuda'])
    ap.add_argument('--repeats', type=int, default=3)
    ap.add_argument('--quick', action='store_true', help='C=64 at 112^2 and a 64-channel stack only')
    ap.add_argument('--no-reference', action='store_true', help='time ours only')
    ap.add_argument('--only', choices=['op', 'stack'], help='run one of the two tables')
    ap.add_argument('--worker', help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        print(json.dumps(worker(json.loads(args.worker))))
        return

    print_header('featup_plugin op benchmark', args.device)
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
