"""Small helpers shared by test folders (plain functions; imported as ``tests.helpers``)."""

import pytest
import torch


def perturb(module, seed=None, scale=1.0):
    """Adds ``scale`` times Gaussian noise to every parameter of ``module`` (seeded if ``seed`` is given), so
    that weights differ from their init; returns ``module``."""
    if seed is not None:
        torch.manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(scale * torch.randn_like(p))
    return module


def assert_same_state(a, b):
    """The two modules' state dicts have the same keys and exactly equal tensors."""
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k


@pytest.fixture
def one_thread():
    """Runs a test with one intra-op thread (restored after): small CPU models on a shared machine run many
    times faster without thread oversubscription. Use with ``pytestmark = pytest.mark.usefixtures('one_thread')``
    after ``from tests.helpers import one_thread``."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
