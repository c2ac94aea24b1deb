#!/usr/bin/env python3
"""Autocast accuracy and speed of the ops and modules (random init, eval mode), in one run: relative L2 error of the
output and of the input gradient under ``torch.autocast`` (bfloat16, float16) against float32 (float32 inputs;
float16 gradients with GradScaler's initial loss scale 2^16), and the time of a forward + backward
under autocast as a ratio to float32 (same process, same inputs; median of ``--reps``).

    python3 tools/benchmarks/benchmark_autocast.py [--device cpu|cuda] [--reps 3] [--size 64]

Rule and tolerances: docs/ops.md#autocast. Figures: docs/benchmarks.md#autocast
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

import torch  # noqa: E402
import torch.nn as nn  # noqa: E402


def _cases(dev: str, size: int):
    from featup_plugin.layers.pac_crf import PacCRF
    from featup_plugin.ops import PacConv2d, adaptive_conv, local_correlation
    from featup_plugin.upsamplers import JBUStack
    from featup_plugin.upsamplers.pac_joint import PacJointUpsampler

    g = torch.Generator().manual_seed(0)

    def rnd(*shape):
        return torch.randn(*shape, generator=g).to(dev)

    k, c, s = 7, 64, size
    x = rnd(2, c, s + k - 1, s + k - 1)
    f = torch.softmax(rnd(2, s, s, k * k), -1).view(2, s, s, k, k)
    yield 'adaptive_conv C=64 k=7', None, lambda m, a: adaptive_conv(a, f), x
    yield 'local_correlation C=64 k=7', None, lambda m, a: local_correlation(a[:, :, 3:-3, 3:-3], a), x
    jbu = JBUStack(c, num_stages=3).to(dev)
    img = rnd(2, 3, s, s)
    yield f'JBUStack(64) {s // 8}->{s}', jbu, lambda m, a: m(a, img), rnd(2, c, s // 8, s // 8)
    pac = PacConv2d(c, c, 5, padding=2).to(dev)
    guide = rnd(2, 8, s, s)
    yield 'PacConv2d 64->64 k=5', pac, lambda m, a: m(a, guide), rnd(2, c, s, s)
    crf = PacCRF(8, num_iters=5).to(dev)
    yield 'PacCRF 8 classes, 5 iters', crf, lambda m, a: m(a, img), rnd(2, 8, s, s)
    joint = PacJointUpsampler(c, num_stages=3).to(dev)
    yield f'PacJointUpsampler(64) {s // 8}->{s}', joint, lambda m, a: m(a, img), rnd(2, c, s // 8, s // 8)


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach().double(), b.detach().double()
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


def _step(fn, module, x, dev, dtype):
    x = x.clone().requires_grad_()
    with torch.autocast(dev, dtype=dtype or torch.float32, enabled=dtype is not None):
        out = fn(module, x)
    scale = 2.0**16 if dtype == torch.float16 else 1.0  # float16 is trained with a loss scale (GradScaler's init)
    (scale * out.float().square().mean()).backward()
    return out, x.grad / scale


def _time(fn, module, x, dev, dtype, reps):
    times = []
    for _ in range(reps):
        if dev == 'cuda':
            torch.cuda.synchronize()
        t = time.perf_counter()
        _step(fn, module, x, dev, dtype)
        if dev == 'cuda':
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu', choices=['cpu', 'cuda'])
    p.add_argument('--reps', type=int, default=3)
    p.add_argument('--size', type=int, default=64, help='output side of the cases (a multiple of 8)')
    args = p.parse_args(argv)
    if args.device == 'cuda' and not torch.cuda.is_available():
        raise SystemExit('benchmark_autocast: --device cuda but no CUDA device is visible')
    if args.size < 8 or args.size % 8:
        raise SystemExit(f'benchmark_autocast: --size must be a positive multiple of 8, got {args.size}')
    if args.reps < 1:
        raise SystemExit(f'benchmark_autocast: --reps must be >= 1, got {args.reps}')
    from featup_plugin.ops import backend_name

    dev = args.device
    print(f'# autocast vs float32 on {dev} (backend {backend_name()}), size {args.size}, median of {args.reps}')
    print('| case | dtype | out rel err | grad rel err | time vs fp32 |')
    print('|---|---|---|---|---|')
    for name, module, fn, x in _cases(dev, args.size):
        if isinstance(module, nn.Module):
            module.eval()  # no dropout: float32 and autocast compute the same function
        ref_out, ref_grad = _step(fn, module, x, dev, None)
        t32 = _time(fn, module, x, dev, None, args.reps)
        for dtype in (torch.bfloat16, torch.float16):
            out, grad = _step(fn, module, x, dev, dtype)
            ok = bool(torch.isfinite(out).all() and torch.isfinite(grad).all())
            ratio = _time(fn, module, x, dev, dtype, args.reps) / t32
            print(
                f'| {name} | {str(dtype)[6:]} | {_rel(out, ref_out):.1e} | {_rel(grad, ref_grad):.1e} | '
                f'{ratio:.2f}x{"" if ok else " NON-FINITE"} |'
            )
        if isinstance(module, nn.Module):
            module.zero_grad()


if __name__ == '__main__':
    main()
