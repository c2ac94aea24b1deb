"""Loading mmengine checkpoints under torch >= 2.6, whose ``torch.load`` refuses non-tensor objects by default.

mmengine (0.10) saves its message hub in every checkpoint: ``HistoryBuffer`` objects holding numpy arrays, which
pickle through ``numpy``'s reconstructors and ``getattr``. ``torch.load(weights_only=True)`` rejects them, so
``--resume`` and ``tools/test.py CHECKPOINT`` fail out of the box. Instead of turning the safe loader off, this
loader first tries it, and unpickles fully only when the file's pickle names nothing but the globals that
mmengine and numpy put there; anything else is refused with the list of unexpected names.
"""
from __future__ import annotations

import os.path as osp
import pickletools
import zipfile
from typing import Set

import torch

# What an mmengine/mmseg training checkpoint may reference besides tensors and plain containers.
MMENGINE_CHECKPOINT_GLOBALS = frozenset({
    'collections.OrderedDict', 'builtins.getattr', '__builtin__.getattr', '_codecs.encode',
    'numpy.ndarray', 'numpy.dtype', 'numpy.core.multiarray._reconstruct', 'numpy.core.multiarray.scalar',
    'numpy._core.multiarray._reconstruct', 'numpy._core.multiarray.scalar',
    'mmengine.logging.history_buffer.HistoryBuffer', 'mmengine.config.config.ConfigDict',
    'torch._utils._rebuild_tensor_v2', 'torch._utils._rebuild_parameter', 'torch.Size',
})


def _is_safe_global(name: str) -> bool:
    return (name in MMENGINE_CHECKPOINT_GLOBALS or name.startswith('numpy.dtypes.')
            or (name.startswith('torch.') and name.endswith('Storage')))


def pickle_globals(filename: str) -> Set[str]:
    """The ``module.name`` globals a torch zip checkpoint's pickle refers to (without unpickling it)."""
    with zipfile.ZipFile(filename) as z:
        data = z.read(next(n for n in z.namelist() if n.endswith('data.pkl')))
    names, strings = set(), []
    for op, arg, _ in pickletools.genops(data):
        if op.name == 'GLOBAL':
            names.add(arg.replace(' ', '.'))
        elif op.name == 'STACK_GLOBAL' and len(strings) >= 2:
            names.add(f'{strings[-2]}.{strings[-1]}')
        if isinstance(arg, str) and 'UNICODE' in op.name:
            strings.append(arg)
    return names


def load_mmengine_checkpoint(filename: str, map_location=None):
    """``torch.load`` for checkpoints written by mmengine's Runner (see the module docstring)."""
    filename = osp.expanduser(filename)
    if not osp.isfile(filename):
        raise FileNotFoundError(f'{filename} can not be found.')
    try:
        return torch.load(filename, map_location=map_location, weights_only=True)
    except Exception as err:  # UnpicklingError: not only tensors
        if not zipfile.is_zipfile(filename):
            raise
        unexpected = sorted(n for n in pickle_globals(filename) if not _is_safe_global(n))
        if unexpected:
            raise RuntimeError(
                f'{filename} references objects beyond what mmengine checkpoints hold ({", ".join(unexpected)}); '
                'it is not loaded. If you trust the file, load it yourself with torch.load(..., '
                'weights_only=False) and save its state_dict.') from err
        return torch.load(filename, map_location=map_location, weights_only=False)
