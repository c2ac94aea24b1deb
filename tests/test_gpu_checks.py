"""tools/gpu: the GPU check must fail loudly where it cannot test the CUDA kernels, never pass vacuously."""

import os
import subprocess
import sys
import time

import pytest
import torch

from tests import ROOT

SCRIPT = os.path.join(ROOT, 'tools', 'run_gpu_checks.sh')
SELFCHECK = os.path.join(ROOT, 'tools', 'gpu', 'cuda_selfcheck.py')


def _env(**extra):
    return dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get('PYTHONPATH', ''), **extra)


@pytest.mark.skipif(torch.cuda.is_available(), reason='checks the behaviour without a GPU')
def test_gpu_check_fails_fast_without_gpu(tmp_path):
    t0 = time.time()
    res = subprocess.run(['bash', SCRIPT, str(tmp_path)], capture_output=True, text=True, env=_env(), timeout=120)
    took = time.time() - t0
    summary = (tmp_path / 'summary.txt').read_text()
    assert res.returncode == 2, res.stdout + res.stderr
    assert took < 60
    assert summary.startswith('FAIL preflight') and 'no CUDA device' in summary and 'PASS' not in summary
    assert not (tmp_path / 'pytest_cuda.log').exists()  # nothing after the preflight ran


def test_gpu_check_uses_PYTHON_and_fails_when_it_is_broken(tmp_path):
    res = subprocess.run(
        ['bash', SCRIPT, str(tmp_path)], capture_output=True, text=True, env=_env(PYTHON='/bin/false'), timeout=60
    )
    assert res.returncode == 2
    assert 'FAIL preflight' in (tmp_path / 'summary.txt').read_text()


@pytest.mark.slow
def test_selfcheck_sections_on_cpu_kernels():
    # The backward and determinism sections run on the CPU kernels too (the GPU runs the same code on CUDA).
    res = subprocess.run(
        [sys.executable, SELFCHECK, '--device', 'cpu', '--sections', 'backward,deterministic,streams'],
        capture_output=True,
        text=True,
        env=_env(),
        timeout=600,
    )
    assert res.returncode == 0, res.stdout + res.stderr
    assert 'PASS backward' in res.stdout and 'PASS deterministic' in res.stdout
    assert 'SKIP streams' in res.stdout


def test_selfcheck_rejects_unknown_section():
    res = subprocess.run(
        [sys.executable, SELFCHECK, '--device', 'cpu', '--sections', 'forward,bogus'],
        capture_output=True,
        text=True,
        env=_env(),
        timeout=120,
    )
    assert res.returncode == 2 and "unknown section(s) ['bogus']" in res.stderr
