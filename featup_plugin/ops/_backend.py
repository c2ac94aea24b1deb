"""Finds the compiled JBU op: prebuilt extension, then a JIT build with ninja, then the PyTorch reference (one
``RuntimeWarning``). The environment variable ``FEATUP_OPS`` (``auto``, ``ext``, ``jit`` or ``reference``; read once,
at the first call of an op) forces a choice.

Derivation / details: docs/ops.md#backend-selection-featup_ops
"""

from __future__ import annotations

import glob
import os
import threading
import warnings
from types import ModuleType
from typing import Optional

_CSRC = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'csrc')
_CHOICES = ('auto', 'ext', 'jit', 'reference')

_lock = threading.Lock()
_state: dict = {}


def requested_backend() -> str:
    value = os.environ.get('FEATUP_OPS', 'auto').strip().lower() or 'auto'
    if value not in _CHOICES:
        raise ValueError(f'FEATUP_OPS={value!r} is not one of {", ".join(_CHOICES)}')
    return value


def sources(with_cuda: bool) -> list:
    """The C++ (and optionally CUDA) sources of the extension, relative paths resolved."""
    srcs = sorted(glob.glob(os.path.join(_CSRC, 'pytorch', '*.cpp')))
    srcs += sorted(glob.glob(os.path.join(_CSRC, 'pytorch', 'cpu', '*.cpp')))
    if with_cuda:
        srcs += sorted(glob.glob(os.path.join(_CSRC, 'pytorch', 'cuda', '*.cu')))
    return srcs


def include_dirs() -> list:
    return [os.path.join(_CSRC, 'common'), os.path.join(_CSRC, 'common', 'cuda')]


def _jit_build(with_cuda: bool) -> ModuleType:
    from ._cuda_home import export_cuda_home

    export_cuda_home()
    from torch.utils.cpp_extension import load

    from ._build_flags import CUDA_MACRO, CXX_FLAGS, LD_FLAGS, NVCC_FLAGS

    macro = [f'-D{CUDA_MACRO}'] if with_cuda else []
    name = 'featup_plugin_jit_ext' + ('_cuda' if with_cuda else '_cpu')
    return load(
        name=name,
        sources=sources(with_cuda),
        extra_include_paths=include_dirs(),
        extra_cflags=CXX_FLAGS + macro,
        extra_cuda_cflags=NVCC_FLAGS + macro if with_cuda else None,
        extra_ldflags=list(LD_FLAGS),
        with_cuda=with_cuda,
        verbose=False,
    )


def _first_error_line(message: str) -> str:
    """The compiler's first error from a build log (torch puts the ninja output in the exception)."""
    lines = [ln.strip() for ln in message.splitlines() if ln.strip()]
    for ln in lines:
        if 'error' in ln.lower() and 'build stopped' not in ln and not ln.startswith('Error building extension'):
            return ln[-400:]
    return lines[-1][-400:] if lines else 'unknown error'


def _want_cuda() -> bool:
    import torch

    from ._cuda_home import find_cuda_home

    return torch.cuda.is_available() and find_cuda_home() is not None


def _load() -> tuple:
    """Returns (module or None, description)."""
    choice = requested_backend()
    if choice == 'reference':
        return None, 'reference (FEATUP_OPS=reference)'
    errors = []
    if choice in ('auto', 'ext'):
        try:
            from featup_plugin import _ext  # type: ignore[attr-defined]

            if _ext.with_cuda() or not _want_cuda() or choice == 'ext':
                return _ext, 'ext' + (' (cpu+cuda)' if _ext.with_cuda() else ' (cpu)')
            errors.append('the prebuilt extension has no CUDA kernels but a GPU is present')
        except ImportError as exc:
            if choice == 'ext':
                raise ImportError(
                    'FEATUP_OPS=ext but the compiled extension featup_plugin._ext is missing; '
                    'build it with `pip install -e . --no-build-isolation`'
                ) from exc
            errors.append(f'prebuilt extension: {exc}')
    try:
        with_cuda = _want_cuda()
        mod = _jit_build(with_cuda)
        return mod, 'jit' + (' (cpu+cuda)' if with_cuda else ' (cpu)')
    except Exception as exc:  # noqa: BLE001 - any build failure falls back, once, loudly
        reason = f'JIT build: {type(exc).__name__}: {_first_error_line(str(exc))}'
        if choice == 'jit':
            raise RuntimeError(
                f'FEATUP_OPS=jit but the JIT build of featup_plugin/ops/csrc failed ({reason}); '
                'unset FEATUP_OPS to fall back to the prebuilt extension or the pure-PyTorch reference'
            ) from exc
        errors.append(reason)
    warnings.warn(
        'featup_plugin: no compiled JBU op could be loaded, using the slower pure-PyTorch reference. '
        'Reasons: ' + '; '.join(errors) + '. Build it with `pip install -e . --no-build-isolation` '
        '(or set FEATUP_OPS=reference to silence this).',
        RuntimeWarning,
        stacklevel=3,
    )
    return None, 'reference (fallback)'


def get_ext() -> Optional[ModuleType]:
    """The compiled module, or None when the reference is in use. Loads at most once per process."""
    if 'ext' not in _state:
        with _lock:
            if 'ext' not in _state:
                _state['ext'], _state['desc'] = _load()
    return _state['ext']


def backend_name() -> str:
    """A short description of the implementation in use, e.g. ``'ext (cpu)'`` or ``'reference (fallback)'``."""
    get_ext()
    return _state['desc']


def _reset_for_tests() -> None:
    with _lock:
        _state.clear()
