#!/usr/bin/env python3
"""Checks the CUDA kernels of the compiled featup_plugin op against pure-PyTorch references.

Run on a machine with a GPU (the extension is JIT-built with CUDA there if no prebuilt one has CUDA):

    python tools/gpu/cuda_selfcheck.py [--cases 200] [--seed 0] [--bench] [--sections forward,backward,...]

For random shapes (batch 1-3, C 1-70, H/W 1-40, k in 1, 3, 5, 7, 9) plus fixed cases for the generic-k,
direct (huge k), channel-split and no-split code paths, it compares

* ``torch.ops.featup.adaptive_conv(input, kernel)``  with ``sum_t kernel[:, t, None] * input[:, :, i:i+H, j:j+W]``
* ``torch.ops.featup.local_correlation(center, padded)`` with ``(center * padded[:, :, i:i+H, j:j+W]).sum(1)``

in float64 (tol 1e-10) and float32 (tol 1e-4), and half / bfloat16 against the float32 result on the same
(rounded) inputs with loose tolerances. Errors are relative to the largest ``sum |a| * |b|`` of the case, so
cancellation cannot make a tolerance meaningless. Further sections (all run by default, ``--sections`` picks):

* ``backward``: gradients of both public ops (and of PAC conv / transposed conv / pooling) against autograd
  through the unfold references, every dtype;
* ``streams``: the ops on a non-default CUDA stream equal the default-stream result (kernels must launch on the
  current stream);
* ``devices``: a case on ``cuda:1`` when two GPUs exist (device guards), reported as skipped otherwise;
* ``deterministic``: under ``torch.use_deterministic_algorithms(True)`` two forward+backward runs are bitwise
  equal, or the op refuses with an error naming determinism (as PyTorch's own ops do);
* ``autocast``: ``JBUStack`` and ``PacConv2d`` forward+backward under fp16 / bf16 autocast, finite and close to
  float32.

Prints one line per failure and a PASS/FAIL line per section; exits 1 on any failure, 2 when no CUDA device /
CUDA build is available.
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


SECTIONS = ('forward', 'backward', 'streams', 'devices', 'deterministic', 'autocast')
GRAD_TOL = {torch.float64: 1e-9, torch.float32: 1e-4, torch.float16: 1e-2, torch.bfloat16: 5e-2}


def _sync(dev):
    if dev.type == 'cuda':
        torch.cuda.synchronize(dev)


def _grads(fn, inputs, seed):
    """fn(*inputs) and the gradients of <fn(*inputs), R> for a fixed random R (float64 copies of the result)."""
    leaves = [t.detach().clone().requires_grad_(True) for t in inputs]
    out = fn(*leaves)
    gen = torch.Generator(device='cpu').manual_seed(seed)
    r = torch.randn(out.shape, generator=gen, dtype=torch.float64).to(out.device, out.dtype)
    grads = torch.autograd.grad(out, leaves, r)
    return [out.detach().double()] + [g.double() for g in grads]


def _compare(name, got, ref, tol, fails):
    for i, (a, b) in enumerate(zip(got, ref)):
        what = 'out' if i == 0 else f'grad{i - 1}'
        if not torch.isfinite(a).all():
            fails.append((f'{name}.{what}', 'non-finite values', tol))
            continue
        err = ((a - b).abs().max() / b.abs().max().clamp_min(1e-30)).item()
        if not err <= tol:
            fails.append((f'{name}.{what}', err, tol))


def _backward_cases(dev, dtype, seed):
    """(name, fn, inputs, reference fn) for both JBU ops and the three PAC layers' functional forms."""
    from featup_plugin.ops import (
        adaptive_conv,
        adaptive_conv_reference,
        local_correlation,
        local_correlation_reference,
        pac_conv2d,
        pac_pool2d,
    )
    from featup_plugin.ops.pac_reference import pac_conv2d_unfold

    gen = torch.Generator(device='cpu').manual_seed(seed)

    def rnd(*shape):
        return torch.randn(*shape, generator=gen, dtype=torch.float64).to(dev, dtype)

    cases = []
    for b, c, h, w, k in ((2, 19, 13, 11, 7), (1, 70, 9, 8, 3), (1, 5, 6, 5, 9)):
        x, f, g = rnd(b, c, h + k - 1, w + k - 1), rnd(b, h, w, k, k), rnd(b, c, h, w)
        cases.append((f'adaptive_conv k={k}', adaptive_conv, (x, f), adaptive_conv_reference))
        cases.append((f'local_correlation k={k}', local_correlation, (g, x), local_correlation_reference))
    k, s, p, d = (3, 3), (2, 2), (1, 1), (1, 2)
    x, wt = rnd(2, 6, 11, 13), rnd(4, 6, 3, 3)
    ho, wo = (11 + 2 - 2 - 1) // 2 + 1, (13 + 2 - 4 - 1) // 2 + 1
    kern = rnd(2, 9, ho, wo).abs()
    cases.append(
        (
            'pac_conv2d',
            lambda a, kk, ww: pac_conv2d(a, kk, ww, None, s, p, d),
            (x, kern, wt),
            lambda a, kk, ww: pac_conv2d_unfold(a, kk, ww, None, k, s, p, d),
        )
    )
    cases.append(
        (
            'pac_pool2d',
            lambda a, kk: pac_pool2d(a, kk, k, s, p, d),
            (x, kern),
            lambda a, kk: pac_conv2d_unfold(a, kk, None, None, k, s, p, d),
        )
    )
    return cases


def check_backward(dev, seed):
    fails = []
    for dtype in (torch.float64, torch.float32, torch.float16, torch.bfloat16):
        if dev.type == 'cpu' and dtype in (torch.float16,):
            continue  # the CPU kernels have no half path worth checking here
        for n, (name, fn, inputs, ref) in enumerate(_backward_cases(dev, dtype, seed)):
            try:
                got = _grads(fn, inputs, seed + n)
                # reference in float64 on the same (rounded) inputs
                want = _grads(ref, [t.double() for t in inputs], seed + n)
                _compare(f'{name} {str(dtype)[6:]}', got, want, GRAD_TOL[dtype], fails)
            except Exception as exc:  # noqa: BLE001 - report and go on
                fails.append((f'{name} {str(dtype)[6:]}', f'{type(exc).__name__}: {exc}', GRAD_TOL[dtype]))
    return fails


def check_streams(dev, seed):
    if dev.type != 'cuda':
        return None
    fails = []
    for n, (name, fn, inputs, _) in enumerate(_backward_cases(dev, torch.float32, seed)):
        want = _grads(fn, inputs, seed + n)
        stream = torch.cuda.Stream(device=dev)
        stream.wait_stream(torch.cuda.current_stream(dev))
        with torch.cuda.stream(stream):
            # fresh inputs written on the side stream, then the op, without any synchronisation in between
            side = [t.detach().clone().mul_(1.0) for t in inputs]
            got = _grads(fn, side, seed + n)
        torch.cuda.current_stream(dev).wait_stream(stream)
        _sync(dev)
        _compare(f'{name} (side stream)', got, want, 0.0, fails)
    return fails


def check_devices(dev, seed):
    if dev.type != 'cuda' or torch.cuda.device_count() < 2:
        return None
    other = torch.device('cuda', 1 if dev.index != 1 else 0)
    fails = []
    for n, (name, fn, inputs, ref) in enumerate(_backward_cases(other, torch.float64, seed)):
        got = _grads(fn, inputs, seed + n)
        if any(t.device != other for t in got):
            fails.append((f'{name} on {other}', 'result on the wrong device', 0.0))
        _compare(f'{name} on {other}', got, _grads(ref, inputs, seed + n), GRAD_TOL[torch.float64], fails)
    return fails


def check_deterministic(dev, seed):
    fails = []
    before = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        for n, (name, fn, inputs, _) in enumerate(_backward_cases(dev, torch.float32, seed)):
            try:
                a = _grads(fn, inputs, seed + n)
                b = _grads(fn, inputs, seed + n)
            except RuntimeError as exc:
                if 'determinis' not in str(exc):
                    fails.append((f'{name} deterministic', f'RuntimeError without saying why: {exc}', 0.0))
                continue
            if any(not torch.equal(x, y) for x, y in zip(a, b)):
                fails.append((f'{name} deterministic', 'two runs differ bitwise', 0.0))
    finally:
        torch.use_deterministic_algorithms(before)
    return fails


def check_autocast(dev, seed):
    from featup_plugin.ops import PacConv2d
    from featup_plugin.upsamplers import JBUStack

    torch.manual_seed(seed)
    fails = []
    models = (
        ('JBUStack', JBUStack(32).to(dev), (torch.randn(2, 32, 7, 9), torch.rand(2, 3, 56, 72))),
        ('PacConv2d', PacConv2d(8, 6, 5, padding=2).to(dev), (torch.randn(2, 8, 17, 19), torch.randn(2, 3, 17, 19))),
    )
    dtypes = (torch.float16, torch.bfloat16)
    for name, model, inputs in models:
        model.eval()  # no dropout: the float32 reference and the autocast run compute the same function
        inputs = [t.to(dev) for t in inputs]
        ref = model(*inputs).double()
        for dtype in dtypes:
            label = f'{name} autocast {str(dtype)[6:]}'
            try:
                model.zero_grad()
                with torch.autocast(dev.type, dtype=dtype):
                    out = model(*inputs)
                out.float().square().mean().backward()
                grads = [p.grad for p in model.parameters() if p.requires_grad]
                if not torch.isfinite(out).all() or any(g is None or not torch.isfinite(g).all() for g in grads):
                    fails.append((label, 'non-finite output or gradient', 0.0))
                    continue
                err = ((out.double() - ref).abs().max() / ref.abs().max()).item()
                tol = 5e-2 if dtype == torch.bfloat16 else 1e-2
                if not err <= tol:
                    fails.append((label, err, tol))
            except Exception as exc:  # noqa: BLE001 - report and go on
                fails.append((label, f'{type(exc).__name__}: {exc}'.splitlines()[0][:300], 0.0))
    return fails


def check_forward(ext, dev, args):
    """The forward kernels against the tap-loop formulas on random and fixed shapes (see the module docstring)."""
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
                    print(f'FAIL forward {name:17s} B={B} C={C} H={H} W={W} k={k} {dt} nc={nc}: err={err} tol={tol}')
    dt_s = time.time() - t0
    if failed:
        return [('cases', f'{failed} of {n} cases failed ({dt_s:.1f} s)', '')]
    print(f'forward: {n} cases ({len(shapes)} shapes x {len(dtypes)} dtypes) in {dt_s:.1f} s')
    return []


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
    ap.add_argument('--sections', default=','.join(SECTIONS), help=f'comma-separated subset of {",".join(SECTIONS)}')
    ap.add_argument(
        '--device',
        default='cuda',
        choices=('cuda', 'cpu'),
        help='cpu runs the same checks on the CPU kernels (to test this script without a GPU)',
    )
    args = ap.parse_args()
    sections = [x.strip() for x in args.sections.split(',') if x.strip()]
    unknown = sorted(set(sections) - set(SECTIONS))
    if unknown:
        ap.error(f'unknown section(s) {unknown}; choose from {", ".join(SECTIONS)}')

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

    status = 0
    for section in sections:
        t0 = time.time()
        if section == 'forward':
            fails, note = check_forward(ext, dev, args), ''
        else:
            fails = globals()[f'check_{section}'](dev, args.seed)
            note = ''
            if fails is None:
                print(f'SKIP {section}: needs {"two GPUs" if section == "devices" else "a CUDA device"}')
                continue
        for name, err, tol in fails:
            print(f'FAIL {section} {name}: err={err} tol={tol}')
        took = time.time() - t0
        if fails:
            status = 1
            print(f'FAIL {section}: {len(fails)} failure(s) ({took:.1f} s){note}')
        else:
            print(f'PASS {section} ({took:.1f} s){note}')
    if args.bench and dev.type == 'cuda':
        bench(ext, dev)
    return status


if __name__ == '__main__':
    sys.exit(main())
