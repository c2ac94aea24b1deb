"""Fixtures and markers shared by every test folder.

Markers (registered in pyproject.toml): ``slow`` (subprocesses, end-to-end runs, JIT builds; the quick loop is
``python3 -m pytest tests -m "not slow"``) and ``cuda`` (skipped, with the reason, where no CUDA GPU is visible).
"""

import subprocess
import sys

import pytest
import torch

FRAMEWORK_BLOCKER = """
import sys, importlib.abc
BLOCKED = ("mmseg", "mmcv", "mmengine", "mmdet", "detectron2", "timm")
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ImportError(f"{name} is blocked for this test")
sys.meta_path.insert(0, Block())
"""


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason='needs a CUDA GPU (none visible)')
    for item in items:
        if 'cuda' in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield


@pytest.fixture(scope='session')
def synth_root(tmp_path_factory):
    """A tiny copy of the project's generated segmentation dataset (8 train / 4 val images of 64x64)."""
    from featup_plugin.data.synthetic import generate_dataset

    root = str(tmp_path_factory.mktemp('featup_synth'))
    generate_dataset(root, num_train=8, num_val=4, size=64, seed=0)
    return root


@pytest.fixture
def run_without_frameworks():
    """``run(code) -> CompletedProcess``: ``code`` in a fresh interpreter where importing mmseg, mmcv, mmengine,
    mmdet, detectron2 or timm raises ImportError (asserts exit status 0)."""

    def run(code: str, timeout: int = 300) -> subprocess.CompletedProcess:
        res = subprocess.run(
            [sys.executable, '-c', FRAMEWORK_BLOCKER + code], capture_output=True, text=True, timeout=timeout
        )
        assert res.returncode == 0, res.stderr[-2000:]
        return res

    return run
