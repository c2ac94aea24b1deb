"""An opt-in caching CPU allocator: freed large blocks are kept and reused instead of being unmapped and faulted in
again, page by page, at the next allocation (glibc maps every block above its mmap threshold fresh).

    from featup_plugin.ops import enable_cpu_cache
    enable_cpu_cache()              # or FEATUP_CPU_CACHE=1 (=<MiB> for the limit) in the environment

It serves every CPU tensor of the process (PyTorch's own included) from the moment it is installed; blocks below
``min_block_mib`` go to the allocator installed before. Needs the compiled extension and Linux. Measured effect and
trade-offs: docs/ops.md#the-caching-cpu-allocator.
"""

from __future__ import annotations

import os
import warnings

from ._backend import get_ext

__all__ = ['enable_cpu_cache', 'disable_cpu_cache', 'empty_cpu_cache', 'cpu_cache_stats']

_ENV = 'FEATUP_CPU_CACHE'


def _ext_with_cache():
    ext = get_ext()
    if ext is None or not hasattr(ext, 'cpu_cache_enable'):
        raise RuntimeError(
            'the caching CPU allocator needs the compiled extension built from current sources '
            '(`pip install -e . --no-build-isolation`); the loaded backend has none'
        )
    return ext


def enable_cpu_cache(max_cached_mib: float = 2048, min_block_mib: float = 1, huge_pages: bool = True) -> None:
    """Installs the caching allocator as PyTorch's CPU allocator (again: updates its settings).

    Args:
        max_cached_mib: the most memory kept in *free* cached blocks; beyond it the smallest are returned to the
            system. Live tensors do not count against it.
        min_block_mib: requests at least this large are cached (size classes of 64 KiB below 32 MiB, 2 MiB
            above); smaller ones go to the previous allocator.
        huge_pages: advise new blocks of 2 MiB or more for transparent huge pages (one fault per 2 MiB; the
            first touch may wait for the kernel to compact memory).

    Raises:
        ValueError: a negative limit or a block size under 4 KiB.
        RuntimeError: no compiled extension, not Linux, or another CPU allocator of higher priority installed.
    """
    if not max_cached_mib >= 0:
        raise ValueError(f'max_cached_mib must be >= 0, got {max_cached_mib!r}')
    min_bytes = int(float(min_block_mib) * 2**20)
    if min_bytes < 4096:
        raise ValueError(f'min_block_mib must be at least 4 KiB (1/256 MiB), got {min_block_mib!r}')
    _ext_with_cache().cpu_cache_enable(int(max_cached_mib * 2**20), min_bytes, bool(huge_pages))


def disable_cpu_cache() -> None:
    """Restores the previous CPU allocator and unmaps the cached blocks (live tensors stay valid; their blocks are
    unmapped when freed)."""
    _ext_with_cache().cpu_cache_disable()


def empty_cpu_cache() -> None:
    """Returns every cached free block to the system (the allocator stays installed)."""
    _ext_with_cache().cpu_cache_empty()


def cpu_cache_stats() -> dict:
    """``enabled``, ``cached_bytes`` (free blocks kept), ``live_bytes`` (blocks in use), ``hits``, ``misses``
    (requests served by a new block) and ``evictions``."""
    keys = ('enabled', 'cached_bytes', 'live_bytes', 'hits', 'misses', 'evictions')
    return dict(zip(keys, _ext_with_cache().cpu_cache_stats()))


def enable_from_env(ext=None) -> None:
    """``FEATUP_CPU_CACHE=1`` (default limit) or ``=<MiB>`` (the limit) enables the cache when the extension
    ``ext`` loads; unset, empty or ``0`` leaves the allocator alone. Without a compiled module that has the cache
    (the reference backend, an old build) it warns and does nothing."""
    value = os.environ.get(_ENV, '').strip()
    if value in ('', '0'):
        return
    try:
        limit = 2048.0 if value == '1' else float(value)
    except ValueError:
        raise ValueError(f'{_ENV} must be 0, 1 or a limit in MiB, got {value!r}') from None
    if ext is None or not hasattr(ext, 'cpu_cache_enable'):
        warnings.warn(
            f'featup_plugin: {_ENV} is set but the loaded backend has no caching CPU allocator '
            '(it needs the compiled extension built from current sources); ignored',
            RuntimeWarning,
            stacklevel=4,
        )
        return
    enable_cpu_cache(max_cached_mib=limit)
