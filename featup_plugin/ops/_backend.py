"""Finds the compiled JBU op: prebuilt extension, then a JIT build with ninja, then the PyTorch reference (one
``RuntimeWarning``). The environment variable ``FEATUP_OPS`` (``auto``, ``ext``, ``jit`` or ``reference``; read once,
at the first call of an op) forces a choice. The chosen module registers the ops with ``torch.library``
(``torch.ops.featup.*``), once per process.

Derivation / details: docs/ops.md#backend-selection-featup_ops, docs/ops.md#registration-with-torchlibrary
"""

from __future__ import annotations

import glob
import os
import threading
import warnings
from types import ModuleType
from typing import Optional

import torch

_CSRC = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'csrc')
_CHOICES = ('auto', 'ext', 'jit', 'reference')

_lock = threading.Lock()
_state: dict = {}
# The compiled module whose kernels serve torch.ops.featup.* (and its description). The dispatcher keeps a
# registration until the process exits, so this survives _reset_for_tests().
_registered: dict = {}


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


def _activate(mod: ModuleType, desc: str) -> tuple:
    """Registers ``mod``'s ops with the dispatcher (schemas and CPU / CUDA kernels in C++, then the fake
    implementations and autograd formulas in Python) unless a module already did in this process; returns the
    (module, description) that serves ``torch.ops.featup``. Guarded: the ``featup`` namespace can be defined once per
    process, so a second compiled module (e.g. a JIT build after the prebuilt one) never registers over the first.
    """
    owner = _registered.get('module')
    if owner is None:
        if not hasattr(mod, 'register_ops'):
            raise ImportError(
                f'{mod.__name__} was built from older sources (it has no register_ops); rebuild it with '
                '`pip install -e . --no-build-isolation`'
            )
        mod.register_ops()
        from . import _library

        _library.register_python_parts()
        _registered.update(module=mod, desc=desc)
        return mod, desc
    if owner is not mod:
        warnings.warn(
            f'featup_plugin: the featup ops are already registered by {owner.__name__} in this process; '
            f'keeping them (not {mod.__name__})',
            RuntimeWarning,
            stacklevel=4,
        )
    return owner, _registered['desc']


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
                return _activate(_ext, 'ext' + (' (cpu+cuda)' if _ext.with_cuda() else ' (cpu)'))
            errors.append('the prebuilt extension has no CUDA kernels but a GPU is present')
        except (ImportError, RuntimeError) as exc:
            if choice == 'ext':
                if isinstance(exc, RuntimeError):
                    raise
                raise ImportError(
                    'FEATUP_OPS=ext but the compiled extension featup_plugin._ext is missing or out of date; '
                    'build it with `pip install -e . --no-build-isolation`'
                ) from exc
            errors.append(f'prebuilt extension: {exc}')
    try:
        with_cuda = _want_cuda()
        mod = _jit_build(with_cuda)
        return _activate(mod, 'jit' + (' (cpu+cuda)' if with_cuda else ' (cpu)'))
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
                ext, desc = _load()
                devices = () if ext is None else ('cpu', 'meta') + (('cuda',) if ext.with_cuda() else ())
                _state.update(ext=ext, desc=desc, devices=devices)
                _apply_env_cpu_cache(ext)
    return _state['ext']


def _apply_env_cpu_cache(ext) -> None:
    """FEATUP_CPU_CACHE once the extension is loaded (parsing and warnings: cpu_cache.enable_from_env)."""
    from .cpu_cache import enable_from_env

    enable_from_env(ext)


@torch.compiler.assume_constant_result
def served_devices() -> tuple:
    """The device types whose tensors ``torch.ops.featup.*`` serve (``'meta'``: shapes only, through the fake
    implementations); ``()`` when the reference is in use. Loads the backend on first use. Under ``torch.compile``
    this runs once, at trace time, and its result is a constant of the graph (the loader itself is not traceable).
    """
    get_ext()
    return _state['devices']


def register_ops() -> bool:
    """Loads the compiled extension (if not yet) and registers ``torch.ops.featup.*``; True if the ops are
    available. Call it before ``torch.export.load`` of a program that contains them, in a fresh process."""
    return get_ext() is not None


def backend_name() -> str:
    """A short description of the implementation in use, e.g. ``'ext (cpu)'`` or ``'reference (fallback)'``."""
    get_ext()
    return _state['desc']


def _reset_for_tests() -> None:
    with _lock:
        _state.clear()


@torch.compiler.assume_constant_result
def has_fused_upsample() -> bool:
    """Whether the loaded module has the CPU kernels of ``featup::upsample2x_bicubic_pad`` and its backward (older
    builds do not); a graph constant under ``torch.compile``, as :func:`served_devices`."""
    get_ext()
    return _state['ext'] is not None and hasattr(torch.ops.featup, 'upsample2x_bicubic_pad_backward')
