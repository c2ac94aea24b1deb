"""Registers :mod:`featup_plugin.mmseg` once mmseg is imported, without importing mmseg itself.

``import featup_plugin`` must stay light (no mmseg, mmcv or mmengine) and still let an mmseg config's
``custom_imports = dict(imports=['featup_plugin'])`` register every module: whether mmseg was imported before
(mmseg's tools) or only later (mmengine's Runner imports it through ``default_scope='mmseg'``). If mmseg is
already in ``sys.modules`` the adapter is imported at once; otherwise a one-shot import hook imports it right
after the top-level ``mmseg`` package has finished executing, and then removes itself.
"""

from __future__ import annotations

import importlib
import importlib.abc
import sys
import threading

ADAPTER = 'featup_plugin.mmseg'
_lock = threading.Lock()


def _import_adapter() -> None:
    try:
        importlib.import_module(ADAPTER)
    except ImportError as e:
        raise ImportError(f'featup_plugin could not register its MMSegmentation modules ({ADAPTER}): {e}') from e


class _LoaderThenAdapter(importlib.abc.Loader):
    """Runs the real loader of ``mmseg``, then imports the adapter. The module keeps the real loader."""

    def __init__(self, loader):
        self.loader = loader

    def create_module(self, spec):
        return self.loader.create_module(spec)

    def exec_module(self, module) -> None:
        _remove_watcher()
        module.__loader__ = self.loader
        if getattr(module, '__spec__', None) is not None:
            module.__spec__.loader = self.loader
        self.loader.exec_module(module)
        _import_adapter()

    def __getattr__(self, name):
        return getattr(self.loader, name)


class _MMSegWatcher(importlib.abc.MetaPathFinder):
    """A ``sys.meta_path`` entry that only acts on the top-level ``mmseg`` import."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname != 'mmseg':
            return None
        for finder in list(sys.meta_path):
            if isinstance(finder, _MMSegWatcher):
                continue
            find = getattr(finder, 'find_spec', None)
            spec = find(fullname, path, target) if find is not None else None
            if spec is not None:
                break
        else:
            return None
        if spec.loader is not None and hasattr(spec.loader, 'exec_module'):
            spec.loader = _LoaderThenAdapter(spec.loader)
        return spec


def _remove_watcher() -> None:
    with _lock:
        sys.meta_path[:] = [f for f in sys.meta_path if not isinstance(f, _MMSegWatcher)]


def register_mmseg_adapter_on_import() -> None:
    """Import :mod:`featup_plugin.mmseg` now if mmseg is imported, else as soon as it is."""
    if 'mmseg' in sys.modules:
        _import_adapter()
        return
    with _lock:
        if not any(isinstance(f, _MMSegWatcher) for f in sys.meta_path):
            sys.meta_path.insert(0, _MMSegWatcher())
