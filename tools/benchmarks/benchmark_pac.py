"""Speed and memory of PacConv2d (compiled tiled op) against the F.unfold reference and the tap-loop fallback.

    python tools/benchmarks/benchmark_pac.py     # CPU: C in {64, 256}, 128x128, k in {3, 5}, forward+backward
    python tools/benchmarks/benchmark_pac.py --device cuda   # the same on a GPU
    python tools/benchmarks/benchmark_pac.py --quick         # C=64, k=3 only

Each case is a PacConv2d(C, C, k, padding=k//2) layer, batch 1, Gaussian kernel from a 3-channel guidance:
forward, then backward of a fixed output gradient into the input, the guidance and the weight. All three
implementations compute the same adapting kernel (pac_kernel2d) and differ only in the convolution:
``ours`` = the compiled tiled implicit GEMM (featup_plugin._ext), ``taps`` = the pure-PyTorch tap loop
(FEATUP_OPS=reference), ``unfold`` = F.unfold + einsum (what the original PAC code does).
Every case runs in a fresh subprocess, so its peak memory is its own: on CPU the peak resident set above the
resident set after the inputs were made, on CUDA ``torch.cuda.max_memory_allocated`` above the inputs.
Times are the best of ``--repeats`` runs after one warm-up (memory is measured after the warm-up too, with
glibc's mmap threshold fixed at 1 MiB so that freed blocks leave the resident set). Ratios are unfold / ours from
this one run.
"""

from __future__ import annotations

import argparse
import json
import os

from _bench import fmt_t, print_header, run_case, time_and_peak  # tools/benchmarks/_bench.py, beside this script


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


def run_pac_case(spec: dict) -> dict:
    # A fixed mmap threshold: glibc returns every block >= 1 MiB to the OS when freed, so the resident set after
    # the warm-up is the inputs', not the warm-up's cached heap.
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_=str(2**20))
    return run_case(__file__, spec, env=env)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--device', default='cpu', choices=['cpu', 'cuda'])
    ap.add_argument('--repeats', type=int, default=3)
    ap.add_argument('--size', type=int, default=128)
    ap.add_argument('--quick', action='store_true', help='C=64, k=3 only')
    ap.add_argument('--worker', help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        print(json.dumps(worker(json.loads(args.worker))))
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
