"""Smoke test of ``tools/benchmarks/benchmark_pac.py --task seg --quick``: all six models train, are evaluated and
timed, and the three comparison tables come out."""

import json
import math
import os
import subprocess
import sys

import pytest

from tests import ROOT

pytest.importorskip('mmseg', reason='MMSegmentation is not installed')


@pytest.mark.slow
def test_seg_benchmark_quick(tmp_path):
    work = tmp_path / 'work'
    cmd = [
        sys.executable,
        os.path.join(ROOT, 'tools', 'benchmarks', 'benchmark_pac.py'),
        '--task',
        'seg',
        '--quick',
        '--work-dir',
        str(work),
        '--data-root',
        str(tmp_path / 'data'),
    ]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=1800, env=dict(os.environ, PYTHONPATH=ROOT))
    out = res.stdout + res.stderr
    assert res.returncode == 0, out[-4000:]
    for title in ('(a) PAC hot-swap', '(b) PAC-CRF', '(c) necks', 'per-class IoU'):
        assert title in res.stdout, res.stdout[-3000:]
    results = json.loads((work / 'results.json').read_text())
    assert set(results) == {'base', 'ft', 'ft_hotswap', 'ft_crf', 'featup', 'pacjoint', 'cost'}
    cost = results.pop('cost')
    assert set(cost) == set(results) and all(c['wall'] > 0 and math.isfinite(c['peak']) for c in cost.values())
    for case, r in results.items():
        assert 0 <= r['mIoU'] <= 100 and 0 <= r['bF'] <= 100, (case, r)
        assert r['step_s'] > 0 and math.isfinite(r['peak_mib']) and len(r['per_class']) == 10
    assert results['ft']['checkpoint'] != results['base']['checkpoint']
    assert os.path.isfile(results['base']['checkpoint'])  # what the fine-tunes started from
    for row in ('| base + PAC hot-swap + fine-tune |', '| base + PAC-CRF + fine-tune |', '| FCN + PacJointUpsampler |'):
        assert row in res.stdout
