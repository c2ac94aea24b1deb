"""The harness shared by tools/benchmarks/benchmark_ops.py and tools/benchmarks/benchmark_pac.py (not a command).

Each benchmark case runs in a fresh subprocess (``run_case``: the script again with ``--worker SPEC``) so that its
peak memory is its own. Inside the worker, ``time_and_peak`` times calls of a function and measures the peak
memory above what was resident before the first call: on CUDA ``torch.cuda.max_memory_allocated`` above
``torch.cuda.memory_allocated``; on CPU a peak resident set above the resident set (``/proc/self/statm``).
"""

from __future__ import annotations

import json
import os
import platform
import resource
import subprocess
import sys
import time
from typing import Callable

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def rss_mib() -> float:
    """The resident set of this process now, in MiB."""
    with open('/proc/self/statm') as f:
        return int(f.read().split()[1]) * os.sysconf('SC_PAGE_SIZE') / 2**20


def maxrss_mib() -> float:
    """``getrusage().ru_maxrss`` in MiB (the highest resident set so far, never reset)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def reset_peak_rss() -> None:
    """Resets the kernel's resident-set high-water mark (VmHWM) of this process (Linux >= 4.0)."""
    with open('/proc/self/clear_refs', 'w') as f:
        f.write('5')


def hwm_rss_mib() -> float:
    """The resident-set high-water mark (VmHWM, which ``reset_peak_rss`` resets) in MiB; ru_maxrss without it."""
    with open('/proc/self/status') as f:
        for line in f:
            if line.startswith('VmHWM:'):
                return int(line.split()[1]) / 1024
    return maxrss_mib()


def time_and_peak(
    run: Callable[[], object], calls: int, cuda: bool, reset_rss_peak: bool = False
) -> tuple[list[float], float]:
    """Calls ``run`` ``calls`` times; returns the wall time of each call (s) and the peak memory above the start (MiB).

    On CPU the peak is VmHWM after ``reset_peak_rss`` if ``reset_rss_peak``, else ru_maxrss (not resettable, so
    it includes everything before). The device is synchronised around each call; results are dropped at once.
    """
    import torch

    sync = torch.cuda.synchronize if cuda else (lambda: None)
    sync()
    if cuda:
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        if reset_rss_peak:
            reset_peak_rss()
        base = rss_mib()
    times = []
    for _ in range(calls):
        sync()
        t0 = time.perf_counter()
        res = run()
        sync()
        times.append(time.perf_counter() - t0)
        del res
    if cuda:
        peak = (torch.cuda.max_memory_allocated() - base) / 2**20
    else:
        peak = (hwm_rss_mib() if reset_rss_peak else maxrss_mib()) - base
    return times, peak


def run_case(script: str, spec: dict, env: dict | None = None) -> dict:
    """Runs ``script --worker SPEC`` in a fresh interpreter; returns the JSON dict on its last stdout line."""
    cmd = [sys.executable, os.path.abspath(script), '--worker', json.dumps(spec)]
    res = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if res.returncode != 0:
        raise RuntimeError(f'benchmark case {spec} failed:\n{res.stderr[-3000:]}')
    return json.loads(res.stdout.strip().splitlines()[-1])


def fmt_t(sec: float) -> str:
    """Milliseconds below 10 s, seconds above."""
    return f'{sec * 1e3:.1f} ms' if sec < 10 else f'{sec:.1f} s'


def print_header(title: str, device: str) -> None:
    """``# TITLE: processor, torch version, device`` (the GPU's name on CUDA, the thread count on CPU)."""
    import torch

    print(
        f'# {title}: {platform.processor() or platform.machine()}, torch {torch.__version__}, '
        f'device {device}'
        + (f' ({torch.cuda.get_device_name()})' if device == 'cuda' else f', {torch.get_num_threads()} threads')
    )
