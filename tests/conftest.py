import os
import sys

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason='needs a CUDA GPU (none visible)')


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield


@pytest.fixture(scope='session')
def synth_root(tmp_path_factory):
    """A tiny copy of the project's generated segmentation dataset (8 train / 4 val images of 64x64)."""
    from featup_plugin.datasets.synthetic import generate_dataset
    root = str(tmp_path_factory.mktemp('featup_synth'))
    generate_dataset(root, num_train=8, num_val=4, size=64, seed=0)
    return root
