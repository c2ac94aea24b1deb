"""Reading checkpoint files (torch + safetensors only): the one reader every part of the project uses.

:func:`read_checkpoint` reads ``.safetensors`` files with safetensors and ``torch.save`` files (zip or legacy)
with ``torch.load(weights_only=True)``. torch >= 2.6 refuses anything but tensors and plain containers there;
then the file's pickle is inspected without running it:

* it names only what mmengine's Runner saves (``HistoryBuffer``, numpy arrays, ``ConfigDict``; every mmengine
  checkpoint has them, so ``--resume`` and ``tools/test.py CHECKPOINT`` need them): it is unpickled fully;
* it names anything else (Lightning's ``AttributeDict``, callbacks, ...): :class:`UntrustedCheckpointError`
  names those globals, unless ``trust=True``, which unpickles fully with a lenient unpickler (classes that
  cannot be imported here become inert placeholders; only tensors are used).

A file that is no checkpoint at all (empty, text, random bytes, a truncated zip, a directory) raises
:class:`NotACheckpointError`, naming the file and what it holds. :func:`read_state_dict` adds unwrapping
(``state_dict`` / ``model`` entries, or an explicit key) and keeps the tensors.
"""

from __future__ import annotations

import io
import os
import pickle
import pickletools
import re
import types
import warnings
import zipfile
from collections import OrderedDict
from typing import Any, Dict, List, Mapping, Optional, Set, Union

import torch

__all__ = [
    'CheckpointError',
    'NotACheckpointError',
    'UntrustedCheckpointError',
    'read_checkpoint',
    'read_state_dict',
    'load_mmengine_checkpoint',
    'pickle_globals',
    'MMENGINE_CHECKPOINT_GLOBALS',
]

PathLike = Union[str, 'os.PathLike[str]']

# What an mmengine/mmseg training checkpoint may reference besides tensors and plain containers.
MMENGINE_CHECKPOINT_GLOBALS = frozenset(
    {
        'collections.OrderedDict',
        'builtins.getattr',
        '__builtin__.getattr',
        '_codecs.encode',
        'numpy.ndarray',
        'numpy.dtype',
        'numpy.core.multiarray._reconstruct',
        'numpy.core.multiarray.scalar',
        'numpy._core.multiarray._reconstruct',
        'numpy._core.multiarray.scalar',
        'mmengine.logging.history_buffer.HistoryBuffer',
        'mmengine.config.config.ConfigDict',
        'torch._utils._rebuild_tensor_v2',
        'torch._utils._rebuild_parameter',
        'torch.Size',
    }
)

_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C  # the first object torch.save pickles in its legacy (non-zip) format


class CheckpointError(ValueError):
    """A file or object that cannot be used as the checkpoint asked for (the message says why)."""


class NotACheckpointError(CheckpointError):
    """The file is not a PyTorch (``torch.save``) or safetensors checkpoint."""


class UntrustedCheckpointError(CheckpointError, RuntimeError):
    """The file needs a full (code-executing) unpickle; read it with ``trust=True`` if its source is trusted.
    Also a ``RuntimeError`` (what :func:`load_mmengine_checkpoint` has always raised for such files)."""


def _is_safe_global(name: str) -> bool:
    return (
        name in MMENGINE_CHECKPOINT_GLOBALS
        or name.startswith('numpy.dtypes.')
        or (name.startswith('torch.') and name.endswith('Storage'))
    )


def pickle_globals(filename: PathLike) -> Set[str]:
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


# -- what a file is ------------------------------------------------------------------------------------------
def _is_legacy_torch_file(head: bytes) -> bool:
    """Whether a file's first bytes are the pickled magic number of torch's legacy format (checked without
    unpickling: ``pickletools`` only parses the opcodes)."""
    try:
        for i, (op, arg, _) in enumerate(pickletools.genops(io.BytesIO(head))):
            if arg == _LEGACY_MAGIC and 'LONG' in op.name:
                return True
            if op.name == 'STOP' or i > 4:
                return False
    except Exception:  # noqa: BLE001 - not a pickle
        return False
    return False


def _looks_like_safetensors(head: bytes) -> bool:
    """safetensors: an 8-byte little-endian header length, then a JSON header."""
    return len(head) > 9 and head[8:9] == b'{' and 0 < int.from_bytes(head[:8], 'little') < 100_000_000


def _describe(path: str, head: bytes) -> str:
    """What a file that is not a checkpoint holds, in a few words."""
    if not head:
        return 'the file is empty'
    if head.startswith(b'PK'):
        return 'a zip archive that is truncated or damaged (no end-of-archive record); an incomplete download?'
    try:
        text = head.decode('utf-8')
    except UnicodeDecodeError:
        text = None
    if text is not None and all(c.isprintable() or c.isspace() for c in text):
        kind = 'a JSON/text file' if text.lstrip()[:1] in ('{', '[') else 'a text file'
        first = ' '.join(text.split())[:60]
        return f'{kind} (it starts with {first!r})'
    return (
        f'binary data starting with {head[:8].hex(" ")}: not a zip archive nor a legacy torch.save file; '
        'truncated or a different format?'
    )


def _not_a_checkpoint(path: str, what: str) -> NotACheckpointError:
    return NotACheckpointError(f'{path} is not a PyTorch or safetensors checkpoint: {what}')


def _weights_only_detail(err: BaseException) -> str:
    """The informative line of torch's weights_only refusal (the rest of its message is generic advice)."""
    text = re.sub(r'\x1b\[[0-9;]*m', '', str(err))
    m = re.search(r'WeightsUnpickler error:\s*(.+?)(?:\n\n|$)', text, re.S)
    detail = (m.group(1) if m else text.strip().splitlines()[0] if text.strip() else type(err).__name__).strip()
    return ' '.join(detail.split())[:300]


def _summarise(names, limit: int = 8) -> str:
    names = sorted(names)
    return ', '.join(names[:limit]) + (f', ... ({len(names) - limit} more)' if len(names) > limit else '')


# -- full unpickling -----------------------------------------------------------------------------------------
class _Placeholder(dict):
    """Stands in for an unimportable pickled object: accepts any constructor arguments, items and state."""

    def __init__(self, *args, **kwargs):  # noqa: D107 - arguments are deliberately ignored
        super().__init__()
        self.__dict__['_args'] = args

    def __setstate__(self, state):
        self.__dict__['_state'] = state


def _lenient_pickle_module(missing: List[str]) -> Any:
    """A ``pickle_module`` for ``torch.load(weights_only=False)`` whose unpickler replaces classes that cannot be
    imported here (e.g. Lightning's ``AttributeDict`` without Lightning installed) by inert placeholders, recording
    their names in ``missing``."""

    class _LenientUnpickler(pickle.Unpickler):
        def find_class(self, module: str, name: str):
            try:
                return super().find_class(module, name)
            except (ImportError, AttributeError):
                missing.append(f'{module}.{name}')
                return type(name, (_Placeholder,), {'__module__': module, '__qualname__': name})

    return types.SimpleNamespace(Unpickler=_LenientUnpickler, load=pickle.load, loads=pickle.loads, __name__='pickle')


def _full_load(path: str, lenient: bool, **kwargs) -> Any:
    if not lenient:
        return torch.load(path, weights_only=False, **kwargs)
    missing: List[str] = []
    obj = torch.load(path, weights_only=False, pickle_module=_lenient_pickle_module(missing), **kwargs)
    if missing:
        warnings.warn(
            f'{path}: classes not importable here were read as placeholders (only the tensors are '
            f'used): {_summarise(set(missing))}',
            stacklevel=4,
        )
    return obj


# -- the reader ----------------------------------------------------------------------------------------------
def read_checkpoint(path: PathLike, *, trust: bool = False, map_location: Any = 'cpu', mmap: bool = False) -> Any:
    """The object in a checkpoint file (see the module docstring for what is accepted and raised).

    Args:
        path: a ``.safetensors`` file or a ``torch.save`` file (zip or legacy format).
        trust: unpickle fully files whose pickle names arbitrary globals (can execute code: trusted files only).
        map_location: ``torch.load``'s (safetensors files are read to the CPU).
        mmap: memory-map zip files (reads only the tensors that are used; for large read-only files).

    Raises:
        FileNotFoundError: no such file. NotACheckpointError: not a checkpoint (names the file and what it
        holds). UntrustedCheckpointError: a full unpickle is needed and ``trust`` is False (names the globals).
    """
    path = os.path.expanduser(os.fspath(path))
    if os.path.isdir(path):
        raise _not_a_checkpoint(path, 'it is a directory')
    if not os.path.isfile(path):
        raise FileNotFoundError(f'no such checkpoint file: {path}')
    with open(path, 'rb') as f:
        head = f.read(512)
    if path.endswith('.safetensors') or _looks_like_safetensors(head):
        from safetensors.torch import load_file

        try:
            return load_file(path, device='cpu')
        except Exception as err:  # noqa: BLE001 - safetensors raises its own error types
            raise _not_a_checkpoint(path, f'not a valid safetensors file ({type(err).__name__}: {err})') from err
    is_zip = zipfile.is_zipfile(path)
    if is_zip:
        with zipfile.ZipFile(path) as z:
            if not any(n.endswith('data.pkl') for n in z.namelist()):
                raise _not_a_checkpoint(
                    path, f'a zip archive without the data.pkl of torch.save (it holds {_summarise(z.namelist(), 4)})'
                )
    elif not _is_legacy_torch_file(head):
        raise _not_a_checkpoint(path, _describe(path, head))
    kwargs: Dict[str, Any] = dict(map_location=map_location)
    if mmap and is_zip:
        kwargs['mmap'] = True
    try:
        try:
            return torch.load(path, weights_only=True, **kwargs)
        except pickle.UnpicklingError as err:  # names globals beyond tensors and containers
            if is_zip:
                names = pickle_globals(path)
            else:
                names = set(re.findall(r'GLOBAL ([\w.]+) was not an allowed global', _weights_only_detail(err)))
            unsafe = sorted(n for n in names if not _is_safe_global(n))
            if is_zip and not unsafe:  # mmengine's own objects: what every Runner checkpoint holds
                return _full_load(path, lenient=False, **kwargs)
            if trust:
                return _full_load(path, lenient=True, **kwargs)
            if not unsafe:
                raise CheckpointError(
                    f'{path} could not be read as a tensors-only checkpoint ({_weights_only_detail(err)}); '
                    'trust=True (--trust) unpickles it fully, which can execute code'
                ) from err
            raise UntrustedCheckpointError(
                f'{path} holds pickled Python objects besides tensors ({_summarise(unsafe)}), e.g. Lightning '
                'hyper_parameters or callback state, so the safe tensors-only load refused it. Reading it needs a '
                'full unpickle, which can execute arbitrary code: if you trust the file, pass trust=True (--trust '
                'in the tools), or save its state_dict with torch.save and use that.'
            ) from err
    except (CheckpointError, FileNotFoundError):
        raise
    except Exception as err:  # noqa: BLE001 - torch's errors for damaged files vary (RuntimeError, EOFError, ...)
        raise _not_a_checkpoint(
            path, f'torch could not read it ({type(err).__name__}: {_weights_only_detail(err)}); truncated?'
        ) from err


def read_state_dict(
    source: Union[PathLike, Mapping[str, Any]],
    *,
    key: Optional[str] = None,
    trust: bool = False,
    where: Optional[str] = None,
) -> 'OrderedDict[str, torch.Tensor]':
    """The tensors of a checkpoint's state dict: ``source`` is a file (read by :func:`read_checkpoint`) or a
    loaded checkpoint dict. ``key``: the entry holding the weights (e.g. DINO's ``'teacher'``); default: the
    ``state_dict`` entry (mmengine, Lightning), else ``model`` (detectron2), else the dict itself."""
    if isinstance(source, (str, os.PathLike)):
        where = where or os.fspath(source)
        ckpt = read_checkpoint(source, trust=trust)
    else:
        where, ckpt = where or 'the given state dict', source
    if not isinstance(ckpt, Mapping):
        raise CheckpointError(f'{where} holds a {type(ckpt).__name__}, not a dict of weights')
    if key is not None:
        if not isinstance(ckpt.get(key), Mapping):
            raise CheckpointError(f'{where} has no dict entry {key!r}; its top-level keys: {list(ckpt)[:20]}')
        ckpt = ckpt[key]
    else:
        for k in ('state_dict', 'model'):
            if isinstance(ckpt.get(k), Mapping):
                ckpt = ckpt[k]
                break
    tensors = OrderedDict((str(k), v) for k, v in ckpt.items() if isinstance(v, torch.Tensor))
    if not tensors:
        raise CheckpointError(
            f'{where} holds no tensors{f" under {key!r}" if key else ""}; its top-level keys: {list(ckpt)[:20]}'
        )
    return tensors


def load_mmengine_checkpoint(filename: str, map_location=None):
    """The loader of mmengine's ``CheckpointLoader`` for local files (registered by ``featup_plugin.mmseg``):
    :func:`read_checkpoint` without ``trust`` (so files naming foreign globals raise, a ``RuntimeError``)."""
    return read_checkpoint(filename, map_location=map_location)
