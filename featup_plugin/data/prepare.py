"""Generate the project's synthetic dataset before a run that needs it (used by tools/train.py, tools/test.py).

A config on the generated data declares how to make it::

    synthetic_data = dict(root='data/featup_synth', num_train=200, num_val=50, size=128, seed=0)

``prepare_generated_datasets(cfg)`` creates it when absent (idempotent: a complete dataset with the same
parameters is left alone). Every process of a distributed launch calls it; a file lock makes one of them
generate while the others wait.
"""

from __future__ import annotations

import contextlib
import os
import os.path as osp
from typing import Any, Mapping

from .synthetic import generate_dataset


@contextlib.contextmanager
def _file_lock(path: str):
    os.makedirs(osp.dirname(osp.abspath(path)) or '.', exist_ok=True)
    with open(path, 'a+') as fh:
        try:
            import fcntl
        except ImportError:  # not POSIX: no lock, generation is still idempotent
            yield
            return
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def prepare_generated_datasets(cfg: Mapping[str, Any]) -> dict | None:
    """Generate ``cfg['synthetic_data']`` if the config has one; returns generate_dataset's summary or None."""
    spec = cfg.get('synthetic_data', None) if hasattr(cfg, 'get') else None
    if spec is None:
        return None
    spec = dict(spec)
    if 'root' not in spec:
        raise ValueError("synthetic_data needs 'root' (the data_root of the generated dataset)")
    root = spec.pop('root')
    with _file_lock(osp.abspath(root).rstrip('/') + '.lock'):
        return generate_dataset(root, **spec)
