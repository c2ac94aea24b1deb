"""The architecture rules of featup_plugin, checked on the source (AST) and in fresh interpreters.

* the core (every package but ``mmseg`` and ``detectron2``) imports no framework and no adapter, and of
  third-party packages only torch, numpy, PIL, timm and safetensors (and matplotlib, an optional dependency,
  inside functions of ``viz.py``);
* ``featup_plugin.mmseg`` imports no detectron2, except the documented lazy bridge: function-level imports in
  ``mmseg/backbones/detectron2_backbone.py`` (the ``Detectron2Backbone``);
* ``featup_plugin.detectron2`` imports no mmseg, mmcv or mmengine and not ``featup_plugin.mmseg``;
* ``import featup_plugin`` imports no framework, and registers the mmseg adapter once mmseg is imported.
"""

import ast
import os
import subprocess
import sys

import pytest

from tests import ROOT

PKG = os.path.join(ROOT, 'featup_plugin')
FRAMEWORKS = {'mmseg', 'mmcv', 'mmengine', 'mmdet', 'detectron2'}
CORE_THIRD_PARTY = {'torch', 'numpy', 'PIL', 'timm', 'safetensors'}
OPTIONAL_LAZY = {'viz.py': {'matplotlib'}}  # optional dependencies a core file may import inside functions
BRIDGE = os.path.join('mmseg', 'backbones', 'detectron2_backbone.py')


def _module_name(path):
    rel = os.path.relpath(path, ROOT)[:-3].split(os.sep)
    return '.'.join(rel[:-1] if rel[-1] == '__init__' else rel)


def _imports(path):
    """``(module, lineno, at_module_level)`` of every import in a file, relative imports made absolute."""
    tree = ast.parse(open(path).read(), path)
    name = _module_name(path)
    package = name if path.endswith('__init__.py') else name.rpartition('.')[0]
    top_level = {id(n) for n in tree.body}
    # imports under module-level if/try blocks count as module level too
    for node in tree.body:
        if isinstance(node, (ast.If, ast.Try)):
            top_level |= {id(n) for n in ast.walk(node)}
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(a.name, node.lineno, id(node) in top_level) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split('.')
                base = base[: len(base) - node.level + 1]
                mod = '.'.join(base + ([node.module] if node.module else []))
            else:
                mod = node.module
            out.append((mod, node.lineno, id(node) in top_level))
            if node.module is None or node.level:  # `from . import x`: x may be a module
                out += [(f'{mod}.{a.name}', node.lineno, id(node) in top_level) for a in node.names]
    return out


def _sources():
    for dirpath, _, files in os.walk(PKG):
        for f in files:
            if f.endswith('.py'):
                path = os.path.join(dirpath, f)
                yield os.path.relpath(path, PKG), path


def _violations():
    bad = []
    stdlib = set(sys.stdlib_module_names)
    for rel, path in _sources():
        part = rel.split(os.sep)[0]
        for mod, line, module_level in _imports(path):
            top = mod.split('.')[0]
            where = f'featup_plugin/{rel}:{line} imports {mod}'
            if part == 'mmseg':
                if top == 'detectron2' or mod.startswith('featup_plugin.detectron2'):
                    if rel != BRIDGE or module_level:
                        bad.append(f'{where} (only {BRIDGE} may, inside functions)')
            elif part == 'detectron2':
                if top in FRAMEWORKS - {'detectron2'} or mod.startswith('featup_plugin.mmseg'):
                    bad.append(f'{where} (the detectron2 adapter must not use mmseg)')
            else:  # the core
                if top in FRAMEWORKS or mod.startswith(('featup_plugin.mmseg', 'featup_plugin.detectron2')):
                    bad.append(f'{where} (the core imports no framework and no adapter)')
                elif top in OPTIONAL_LAZY.get(rel, ()) and not module_level:
                    continue
                elif top not in stdlib and top != 'featup_plugin' and top not in CORE_THIRD_PARTY:
                    bad.append(f'{where} (the core may use only {sorted(CORE_THIRD_PARTY)} besides the stdlib)')
    return bad


def test_import_rules():
    assert _violations() == []


def test_the_rule_check_finds_violations(tmp_path, monkeypatch):
    """The checker itself: a core module importing mmseg, an adapter importing the other, a module-level bridge."""
    fake = tmp_path / 'featup_plugin'
    for rel, text in {
        'core/bad.py': 'import mmcv.ops\n',
        'core/rel.py': 'from ..mmseg import necks\n',
        'detectron2/x.py': 'from ..mmseg.necks import FeatUpJBU\n',
        'mmseg/y.py': 'def f():\n    import detectron2\n',
        BRIDGE: 'import detectron2\n',
        'core/ok.py': 'import torch\nfrom .bad import x\n',
        'core/extra.py': 'import requests\n',
        'core/plot.py': 'def f():\n    import matplotlib\n',
        'viz.py': 'import matplotlib.pyplot\ndef f():\n    from matplotlib.figure import Figure\n',
    }.items():
        p = fake / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
    monkeypatch.setattr(sys.modules[__name__], 'PKG', str(fake))
    monkeypatch.setattr(sys.modules[__name__], 'ROOT', str(tmp_path))
    found = '\n'.join(_violations())
    for rel in (
        'core/bad.py:1 imports mmcv.ops',
        'core/rel.py:1 imports featup_plugin.mmseg',
        'detectron2/x.py:1 imports featup_plugin.mmseg.necks',
        'mmseg/y.py:2 imports detectron2',
        f'{BRIDGE}:1 imports detectron2',
        'core/extra.py:1 imports requests',
        'core/plot.py:2 imports matplotlib',
        'viz.py:1 imports matplotlib.pyplot',
    ):
        assert f'featup_plugin/{rel}' in found
    assert 'core/ok.py' not in found and 'viz.py:3' not in found


def _run(code):
    res = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-3000:]
    return res.stdout


@pytest.mark.slow
def test_import_featup_plugin_imports_no_framework_and_registers_mmseg_on_import():
    pytest.importorskip('mmseg', reason='MMSegmentation is not installed')
    out = _run("""
import sys, time
t = time.perf_counter()
import featup_plugin
print('import time', time.perf_counter() - t)
loaded = sorted(m for m in ('mmseg', 'mmcv', 'mmengine', 'detectron2', 'timm') if m in sys.modules)
assert not loaded, loaded
assert 'featup_plugin.mmseg' not in sys.modules
import mmseg  # the adapter registers itself right after mmseg's top-level package
assert 'featup_plugin.mmseg' in sys.modules
from mmseg.registry import MODELS, DATASETS, METRICS
for name in ('FeatUpJBU', 'ResizeNeck', 'GuidedEncoderDecoder', 'SFTGuidedHead', 'LinearProbeHead', 'TimmViT',
             'Detectron2Backbone', 'FeatUpJBUTrainer', 'PacHotSwap', 'PacCRFHead', 'PacJointUpsampler'):
    assert MODELS.get(name) is not None, name
assert DATASETS.get('FeatUpSyntheticDataset') and DATASETS.get('ImageFolderDataset')
assert METRICS.get('BoundaryFScore') and METRICS.get('GroupIoUMetric')
print('ok')
""")
    assert out.strip().endswith('ok')


@pytest.mark.slow
def test_adapter_registers_when_mmseg_was_imported_first():
    pytest.importorskip('mmseg', reason='MMSegmentation is not installed')
    out = _run("""
import sys
import mmseg.registry
assert 'featup_plugin' not in sys.modules
import featup_plugin
assert 'featup_plugin.mmseg' in sys.modules
from mmseg.registry import MODELS
assert MODELS.get('FeatUpJBU') is not None
print('ok')
""")
    assert out.strip().endswith('ok')
