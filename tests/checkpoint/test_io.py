"""featup_plugin.checkpoint.io: checkpoint loading under torch's safe unpickler."""

import os

import numpy as np
import pytest
import torch

from featup_plugin.checkpoint import load_mmengine_checkpoint
from featup_plugin.checkpoint.io import pickle_globals


class _Evil:
    def __reduce__(self):
        return (os.getcwd, ())  # harmless here, but a pickle must not be allowed to call it


def test_plain_weights_load_with_the_safe_unpickler(tmp_path):
    path = str(tmp_path / 'w.pth')
    torch.save(dict(state_dict=dict(w=torch.ones(2))), path)
    assert torch.equal(load_mmengine_checkpoint(path)['state_dict']['w'], torch.ones(2))


def test_mmengine_style_checkpoint_loads(tmp_path):
    from mmengine.logging.history_buffer import HistoryBuffer

    buf = HistoryBuffer()
    buf.update(np.float64(1.5))
    path = str(tmp_path / 'ckpt.pth')
    torch.save(dict(meta=dict(iter=3), state_dict=dict(w=torch.ones(2)), message_hub=dict(log=buf)), path)
    with pytest.raises(Exception):  # what torch >= 2.6 does by default
        torch.load(path)
    ckpt = load_mmengine_checkpoint(path)
    assert ckpt['meta']['iter'] == 3 and ckpt['message_hub']['log'].current() == 1.5


def test_foreign_objects_are_refused_with_their_names(tmp_path):
    path = str(tmp_path / 'evil.pth')
    torch.save(dict(state_dict=dict(w=torch.ones(1)), x=_Evil()), path)
    assert 'posix.getcwd' in pickle_globals(path) or 'os.getcwd' in pickle_globals(path)
    with pytest.raises(RuntimeError, match='getcwd'):
        load_mmengine_checkpoint(path)
    with pytest.raises(FileNotFoundError):
        load_mmengine_checkpoint(str(tmp_path / 'absent.pth'))
