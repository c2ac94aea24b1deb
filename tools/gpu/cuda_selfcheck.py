#!/usr/bin/env python3
"""Checks the CUDA kernels of the compiled featup_plugin op against pure-PyTorch references.

Run on a machine with a GPU (the extension is JIT-built with CUDA there if no prebuilt one has CUDA):

    python tools/gpu/cuda_selfcheck.py [--cases 200] [--seed 0] [--bench]

For random shapes (batch 1-3, C 1-70, H/W 1-40, k in 1, 3, 5, 7, 9) plus fixed cases for the generic-k,
direct (huge k), channel-split and no-split code paths, it compares

* ``torch.ops.featup.adaptive_conv(input, kernel)``  with ``sum_t kernel[:, t, None] * input[:, :, i:i+H, j:j+W]``
* ``torch.ops.featup.local_correlation(center, padded)`` with ``(center * padded[:, :, i:i+H, j:j+W]).sum(1)``

in float64 (tol 1e-10) and float32 (tol 1e-4), and half / bfloat16 against the float32 result on the same
(rounded) inputs with loose tolerances. Errors are relative to the largest ``sum |a| * |b|`` of the case, so
cancellation cannot make a tolerance meaningless. Prints one line per failure and a PASS/FAIL summary;
exits 1 on any failure, 2 when no CUDA device / CUDA build is available.
"""

from __future__ import annotations

import argparse
import random
import sys
import time

import torch

TOL = {torch.float64: 1e-10, torch.float32: 1e-4, torch.float16: 5e-3, torch.bfloat16: 3e-2}


def ref_conv(x: torch.Tensor, kt: torch.Tensor) -> torch.Tensor:
    h, w = kt.shape[-2:]
    k = x.shape[-2] - h + 1
    out = torch.zeros(x.shape[0], x.shape[1], h, w, dtype=x.dtype, device=x.device)
    for i in range(k):
        for j in range(k):
            out += kt[:, i * k + j, None] * x[:, :, i : i + h, j : j + w]
    return out


def ref_corr(g: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    h, w = g.shape[-2:]
    k = x.shape[-2] - h + 1
    return torch.stack([(g * x[:, :, i : i + h, j : j + w]).sum(1) for i in range(k) for j in range(k)], 1)


def rel_err(out: torch.Tensor, ref: torch.Tensor, scale: torch.Tensor) -> float:
    return ((out.double() - ref.double()).abs().max() / scale.double().max().clamp_min(1e-300)).item()


def check_case(ext, B, C, H, W, k, dtype, dev, seed, noncontig=False):
    """Returns a list of (op, error, tol) failures for one shape / dtype."""
    gen = torch.Generator(device='cpu').manual_seed(seed)
    x = torch.randn(B, C, H + k - 1, W + k - 1, generator=gen, dtype=torch.float64).to(dev, dtype)
    kt = torch.randn(B, k * k, H, W, generator=gen, dtype=torch.float64).to(dev, dtype)
    g = torch.randn(B, C, H, W, generator=gen, dtype=torch.float64).to(dev, dtype)
    if noncontig:  # same values, transposed storage: the op makes them contiguous itself
        x = x.transpose(2, 3).contiguous().transpose(2, 3)
        g = g.transpose(2, 3).contiguous().transpose(2, 3)
    conv = torch.ops.featup.adaptive_conv(x, kt)
    corr = torch.ops.featup.local_correlation(g, x)
    if dev.type == 'cuda':
        torch.cuda.synchronize(dev)
    # float64 / float32: reference in the same dtype (fp64 for the error); half / bf16: against the
    # float32 result on the same rounded inputs.
    rdt = torch.float64 if dtype == torch.float64 else torch.float32
    xr, ktr, gr = x.to(rdt), kt.to(rdt), g.to(rdt)
    if dtype == torch.float32:
        xr, ktr, gr = x.double(), kt.double(), g.double()
    fails = []
    for name, out, ref, scale, shape in (
        ('adaptive_conv', conv, ref_conv(xr, ktr), ref_conv(xr.abs(), ktr.abs()), (B, C, H, W)),
        ('local_correlation', corr, ref_corr(gr, xr), ref_corr(gr.abs(), xr.abs()), (B, k * k, H, W)),
    ):
        if out.dtype != dtype or tuple(out.shape) != shape or out.device != x.device:
            fails.append((name, f'bad result {tuple(out.shape)} {out.dtype} {out.device}', TOL[dtype]))
            continue
        if not torch.isfinite(out).all():
            fails.append((name, 'non-finite values', TOL[dtype]))
            continue
        err = rel_err(out, ref, scale)
        if not err <= TOL[dtype]:
            fails.append((name, err, TOL[dtype]))
    return fails


def bench(ext, dev):
    """Times the two ops at FeatUp-like shapes (CUDA events), with effective DRAM bandwidth."""

    def timeit(fn, reps=20):
        fn()
        torch.cuda.synchronize(dev)
        s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        s.record()
        for _ in range(reps):
            fn()
        e.record()
        torch.cuda.synchronize(dev)
        return s.elapsed_time(e) / reps

    print('benchmark (ms per call, effective GB/s = minimal bytes moved / time):')
    for B, C, H, W, k, dtype in (
        (1, 384, 56, 56, 7, torch.float32),
        (1, 384, 112, 112, 7, torch.float32),
        (1, 384, 224, 224, 7, torch.float32),
        (4, 384, 224, 224, 5, torch.float16),
        (2, 384, 224, 224, 3, torch.bfloat16),
    ):
        x = torch.randn(B, C, H + k - 1, W + k - 1, device=dev, dtype=dtype)
        kt = torch.randn(B, k * k, H, W, device=dev, dtype=dtype)
        g = torch.randn(B, C, H, W, device=dev, dtype=dtype)
        es = x.element_size()
        nbytes = es * (x.numel() + kt.numel() + g.numel())
        t1 = timeit(lambda: torch.ops.featup.adaptive_conv(x, kt))
        t2 = timeit(lambda: torch.ops.featup.local_correlation(g, x))
        t3 = timeit(lambda: ref_conv(x, kt), reps=3)
        print(
            f'  B={B} C={C} {H}x{W} k={k} {str(dtype)[6:]:9s} '
            f'adaptive_conv {t1:8.3f} ms ({nbytes / t1 / 1e6:7.0f} GB/s)'
            f'  local_correlation {t2:8.3f} ms ({nbytes / t2 / 1e6:7.0f} GB/s)  [torch taps conv {t3:8.3f} ms]'
        )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--cases', type=int, default=150, help='number of random shapes (each in all 4 dtypes)')
    ap.add_argument('--seed', type=int, default=0)
    ap.add_argument('--bench', action='store_true', help='also time the ops at FeatUp-like shapes')
    ap.add_argument(
        '--device',
        default='cuda',
        choices=('cuda', 'cpu'),
        help='cpu runs the same checks on the CPU kernels (to test this script without a GPU)',
    )
    args = ap.parse_args()

    if args.device == 'cuda' and not torch.cuda.is_available():
        print('SKIP: no CUDA device (this check needs a GPU)')
        return 2
    from featup_plugin.ops import _backend

    ext = _backend.get_ext()
    print(f'backend: {_backend.backend_name()}')
    if ext is None:
        print('FAIL: no compiled extension could be loaded')
        return 2
    if args.device == 'cuda':
        if not ext.with_cuda():
            print('FAIL: the compiled extension has no CUDA kernels')
            return 2
        dev = torch.device('cuda', torch.cuda.current_device())
        print(f'device: {torch.cuda.get_device_name(dev)}')
    else:
        dev = torch.device('cpu')
        print('device: cpu (checking the CPU kernels, not the CUDA ones)')

    rng = random.Random(args.seed)
    shapes = []
    for _ in range(args.cases):
        shapes.append(
            (
                rng.randint(1, 3),
                rng.randint(1, 70),
                rng.randint(1, 40),
                rng.randint(1, 40),
                rng.choice((1, 3, 5, 7, 9)),
                False,
            )
        )
    shapes += [
        (1, 1, 1, 1, 1, False),
        (1, 1, 1, 1, 7, False),
        (3, 70, 40, 40, 7, False),
        (2, 17, 33, 8, 3, True),
        (1, 384, 28, 28, 7, False),  # FeatUp-like, channel split
        (2, 24, 300, 260, 3, False),  # enough tiles: no channel split
        (1, 40, 260, 300, 7, False),
        (2, 33, 17, 45, 11, False),
        (1, 5, 9, 40, 13, False),
        (1, 20, 4, 7, 33, False),  # generic k
        (1, 3, 5, 6, 25, False),
        (1, 3, 4, 7, 41, False),  # direct (window too large for shared memory)
    ]
    dtypes = (torch.float64, torch.float32, torch.float16, torch.bfloat16)
    t0 = time.time()
    n = failed = 0
    for B, C, H, W, k, nc in shapes:
        for dt in dtypes:
            n += 1
            try:
                fails = check_case(ext, B, C, H, W, k, dt, dev, seed=args.seed * 100003 + n, noncontig=nc)
            except Exception as exc:  # noqa: BLE001 - report and go on
                fails = [('exception', f'{type(exc).__name__}: {exc}', TOL[dt])]
            if fails:
                failed += 1
                for name, err, tol in fails:
                    print(f'FAIL {name:17s} B={B} C={C} H={H} W={W} k={k} {dt} noncontig={nc}: err={err} tol={tol}')
    dt_s = time.time() - t0
    if failed:
        print(f'FAIL: {failed} of {n} cases failed ({dt_s:.1f} s)')
        return 1
    print(f'PASS: {n} cases ({len(shapes)} shapes x {len(dtypes)} dtypes) in {dt_s:.1f} s')
    if args.bench and dev.type == 'cuda':
        bench(ext, dev)
    return 0


if __name__ == '__main__':
    sys.exit(main())
