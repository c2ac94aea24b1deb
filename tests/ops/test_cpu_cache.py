"""The opt-in caching CPU allocator (featup_plugin.ops.enable_cpu_cache). It replaces the process's CPU allocator,
so every check that installs it runs in a fresh interpreter."""

import json
import os
import subprocess
import sys
import textwrap

import pytest

import featup_plugin.ops as ops
from featup_plugin.ops import _backend

pytestmark = [
    pytest.mark.slow,  # each test runs a fresh interpreter
    pytest.mark.skipif(
        _backend.get_ext() is None
        or not hasattr(_backend.get_ext(), 'cpu_cache_enable')
        or not sys.platform.startswith('linux'),
        reason='needs the compiled extension (current sources) on Linux',
    ),
]


def _run(code: str, env: dict | None = None, timeout: float = 120) -> dict:
    full_env = dict(os.environ, OMP_NUM_THREADS='1', **(env or {}))
    res = subprocess.run(
        [sys.executable, '-c', textwrap.dedent(code)], capture_output=True, text=True, env=full_env, timeout=timeout
    )
    assert res.returncode == 0, res.stderr[-3000:]
    return json.loads(res.stdout.strip().splitlines()[-1])


_CORE = """
import json, resource, torch
import featup_plugin.ops as ops
torch.manual_seed(0)

def faults(fn):
    r0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    out = fn()
    return out, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - r0

# a result before the allocator is installed, to compare with one computed on cached (reused, dirty) blocks
# (the output and both gradients are 3.5-3.8 MB: cached blocks)
x = torch.randn(1, 48, 102, 102, dtype=torch.float64, requires_grad=True)
f = torch.softmax(torch.randn(1, 96, 96, 49, dtype=torch.float64), -1).view(1, 96, 96, 7, 7).requires_grad_()
def step():
    out = ops.adaptive_conv(x, f)
    gx, gf = torch.autograd.grad(out.square().sum(), (x, f))
    return out.detach(), gx, gf
ref = step()

ops.enable_cpu_cache(max_cached_mib=256, min_block_mib=1)
n = 16 * 2**20  # 64 MiB of float32
a, first = faults(lambda: torch.empty(n).fill_(1.0))
pa = a.data_ptr(); del a
after_free = ops.cpu_cache_stats()
b, second = faults(lambda: torch.empty(n).fill_(2.0))
pb = b.data_ptr()
small_before = ops.cpu_cache_stats()
s = torch.empty(1000).fill_(0.0)  # 4 KB: the previous allocator
small_after = ops.cpu_cache_stats()
del b
runs = [step() for _ in range(3)]  # the second and third reuse the first's blocks
same = all(torch.equal(u, v) for r in runs for u, v in zip(r, ref))
stats = ops.cpu_cache_stats()
ops.empty_cpu_cache()
emptied = ops.cpu_cache_stats()
live = torch.empty(n)  # allocated by the cache, freed after it is disabled
ops.disable_cpu_cache()
disabled = ops.cpu_cache_stats()
live.fill_(3.0); total = float(live[:10].sum()); del live
c = torch.empty(n).fill_(4.0)
final = ops.cpu_cache_stats()
print(json.dumps(dict(pa=pa, pb=pb, first=first, second=second, after_free=after_free, small_before=small_before,
                      small_after=small_after, same=same, stats=stats, emptied=emptied, disabled=disabled,
                      total=total, final=final)))
"""


def test_cached_blocks_are_reused_without_page_faults_and_results_unchanged():
    r = _run(_CORE)
    assert r['after_free']['cached_bytes'] >= 64 * 2**20 and r['after_free']['live_bytes'] == 0
    assert r['pb'] == r['pa'], 'the freed block was not handed out again'
    assert r['pb'] % (1 << 21) == 0, 'blocks of 2 MiB or more are 2 MiB-aligned'
    # first touch: 16384 pages of 4 KiB, or 32 huge pages; the reused block faults no page in
    assert r['first'] >= 32 and r['second'] <= 2, (r['first'], r['second'])
    assert r['small_after']['hits'] == r['small_before']['hits']
    assert r['small_after']['misses'] == r['small_before']['misses'], 'a 4 KB request must go to the previous allocator'
    assert r['same'], 'results on reused (dirty) blocks differ from those before the cache was installed'
    assert r['stats']['hits'] >= 6  # runs 2 and 3 reuse the blocks of the output and both gradients
    assert r['emptied']['cached_bytes'] == 0 and r['emptied']['enabled']
    assert not r['disabled']['enabled']
    assert r['total'] == 30.0
    assert r['final']['hits'] == r['disabled']['hits'] and r['final']['misses'] == r['disabled']['misses']
    # the block freed after disabling is unmapped, not cached (the step results still hold theirs)
    assert r['disabled']['live_bytes'] - r['final']['live_bytes'] == 64 * 2**20
    assert r['final']['cached_bytes'] == 0


def test_limit_evicts_the_smallest_free_blocks():
    r = _run(
        """
        import json, torch
        import featup_plugin.ops as ops
        ops.enable_cpu_cache(max_cached_mib=8, min_block_mib=1)
        ts = [torch.empty(m * 2**18) for m in (3, 4, 5)]  # 3, 4, 5 MiB, live at once
        del ts
        s = ops.cpu_cache_stats()
        print(json.dumps(s))
        """
    )
    assert r['cached_bytes'] <= 8 * 2**20 and r['evictions'] >= 1
    assert r['cached_bytes'] >= 5 * 2**20  # the largest freed block is kept


def test_best_fit_serves_a_smaller_request_within_a_quarter():
    r = _run(
        """
        import json, torch
        import featup_plugin.ops as ops
        ops.enable_cpu_cache(min_block_mib=1)
        a = torch.empty(5 * 2**18); pa = a.data_ptr(); del a        # 5 MiB
        b = torch.empty(9 * 2**17); pb = b.data_ptr(); del b        # 4.5 MiB: within 1.25x, the same block
        c = torch.empty(3 * 2**18); pc = c.data_ptr()               # 3 MiB: too small for it, a new block
        print(json.dumps(dict(pa=pa, pb=pb, pc=pc)))
        """
    )
    assert r['pb'] == r['pa'] and r['pc'] != r['pa']


def test_env_variable_enables_it_and_bad_values_are_named():
    code = """
        import json, torch
        import featup_plugin.ops as ops
        x = torch.randn(1, 2, 10, 10); f = torch.softmax(torch.randn(1, 8, 8, 9), -1).view(1, 8, 8, 3, 3)
        ops.adaptive_conv(x, f)  # loads the extension, which reads FEATUP_CPU_CACHE
        print(json.dumps(ops.cpu_cache_stats()))
    """
    assert _run(code, env={'FEATUP_CPU_CACHE': '1'})['enabled']
    assert not _run(code, env={'FEATUP_CPU_CACHE': '0'})['enabled']
    res = subprocess.run(
        [sys.executable, '-c', textwrap.dedent(code)],
        capture_output=True,
        text=True,
        env=dict(os.environ, FEATUP_CPU_CACHE='lots'),
        timeout=120,
    )
    assert res.returncode != 0 and "FEATUP_CPU_CACHE must be 0, 1 or a limit in MiB, got 'lots'" in res.stderr


def test_fork_after_enabling_does_not_deadlock():
    r = _run(
        """
        import json, os, torch
        import featup_plugin.ops as ops
        ops.enable_cpu_cache()
        keep = torch.empty(2**22)
        pid = os.fork()
        if pid == 0:
            t = torch.empty(2**23).fill_(1.0)
            os._exit(0 if float(t[0]) == 1.0 else 3)
        _, status = os.waitpid(pid, 0)
        print(json.dumps(dict(status=status)))
        """,
        timeout=60,
    )
    assert r['status'] == 0


def test_bad_arguments_and_the_reference_backend_are_named():
    with pytest.raises(ValueError, match='max_cached_mib must be >= 0'):
        ops.enable_cpu_cache(max_cached_mib=-1)
    with pytest.raises(ValueError, match='min_block_mib must be at least 4 KiB'):
        ops.enable_cpu_cache(min_block_mib=0)
    res = subprocess.run(
        [sys.executable, '-c', 'import featup_plugin.ops as o; o.enable_cpu_cache()'],
        capture_output=True,
        text=True,
        env=dict(os.environ, FEATUP_OPS='reference'),
        timeout=120,
    )
    assert res.returncode != 0 and 'the caching CPU allocator needs the compiled extension' in res.stderr
