#!/usr/bin/env bash
# Installs detectron2's Python package (and its pure-Python dependencies) into the active Python:
#   bash tools/install_detectron2.sh            (PYTHON=/path/to/python picks the interpreter)
# Idempotent: a working detectron2 (any version that builds models and imports its trainer/evaluators) is left
# alone; FORCE=1 reinstalls.
#
# Why it is not a plain `pip install detectron2`: detectron2 publishes no source distribution on the registries
# this project can reach. The registry's `sal-detectron2` 0.7.2 is detectron2 0.7.2 (FAIR's code) packed as a
# wheel for CPython 3.10 only (tag cp310, with a compiled `detectron2/_C` for 3.10). On 3.10 that wheel is
# installed as is. On any other Python, the wheel is repacked as a pure-Python wheel:
#   * detectron2/**/*.py and the model-zoo configs are kept unchanged;
#   * the cp310 `_C` extension is left out (no other interpreter can load it), and so is the wheel's top-level
#     `tools` package (detectron2's example scripts, which would shadow any project's own `tools` package);
#   * Requires-Dist is rewritten to what is really installed below (the original pins numpy<2 and pulls black and
#     tensorboard, which the code we use does not import), so that `pip check` stays clean.
# No stub `detectron2._C` is created. Every import of `_C` in detectron2 0.7.2 is guarded by `except ImportError`
# (layers/deform_conv.py -> dummy DeformConv that raises on use; evaluation/coco_evaluation.py -> pycocotools'
# pure-Python COCOeval; utils/collect_env.py -> reports "not built"), so a missing `_C` is the case detectron2
# itself handles. A stub that made `import detectron2._C` succeed would be worse: COCOEvaluator and collect_env
# (called by default_setup) would then take the compiled path and fail. Not available without `_C`: deformable
# convolution and the rotated-box ops (nms_rotated, box_iou_rotated, ROIAlignRotated). ROIAlign, RoIPool and
# nms come from torchvision, so standard Faster/Mask R-CNN runs. A real, loadable `_C` (a 3.10 install, or a
# detectron2 built from source) is never touched.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
PIP="$PY -m pip install --disable-pip-version-check"
D2_DIST=sal-detectron2
D2_VERSION=0.7.2
DEPS=(fvcore iopath "yacs>=0.1.8" "omegaconf>=2.1,<2.4" "hydra-core>=1.1" "termcolor>=1.1" tabulate cloudpickle
      "pycocotools>=2.0.2" matplotlib "Pillow>=7.1" "tqdm>4.29.0" packaging)

step() { echo "[install_detectron2 $(date +%H:%M:%S)] $*"; }

# What featup_plugin.detectron2, its configs, tools/train_net_d2.py and the tests use from detectron2.
check_d2() {
  "$PY" - <<'PY'
import detectron2
from detectron2.config import get_cfg, LazyConfig, instantiate  # noqa: F401
from detectron2.modeling import BACKBONE_REGISTRY, Backbone, build_model, ShapeSpec  # noqa: F401
from detectron2.modeling.backbone.fpn import FPN  # noqa: F401
from detectron2.data import DatasetCatalog, MetadataCatalog, build_detection_train_loader  # noqa: F401
from detectron2.engine import DefaultTrainer, default_setup  # noqa: F401
from detectron2.evaluation import SemSegEvaluator, COCOEvaluator  # noqa: F401
from detectron2.checkpoint import DetectionCheckpointer  # noqa: F401
from detectron2.structures import ImageList  # noqa: F401
try:
    import detectron2._C  # noqa: F401
    c_ext = 'compiled detectron2._C loaded'
except ImportError:
    c_ext = 'no compiled detectron2._C (pure-Python install: no deformable conv / rotated-box ops)'
print('detectron2', detectron2.__version__, 'from', detectron2.__path__[0], '|', c_ext)
PY
}

if [ "${FORCE:-0}" != 1 ] && check_d2 2>/dev/null; then
  step "detectron2 already works in $PY; nothing to do (FORCE=1 reinstalls)"
  exit 0
fi

step "detectron2's dependencies"
$PIP "${DEPS[@]}"

TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
step "downloading $D2_DIST==$D2_VERSION (the cp310 wheel)"
$PY -m pip download --disable-pip-version-check --no-deps --only-binary=:all: --python-version 3.10 \
  "$D2_DIST==$D2_VERSION" -d "$TMP/dl" >/dev/null
WHEEL=$(ls "$TMP"/dl/*.whl)

if [ "$("$PY" -c 'import sys; print(sys.version_info[:2] == (3, 10))')" = True ]; then
  step "Python 3.10: installing the wheel as published (with its compiled _C)"
  $PIP --no-deps --force-reinstall "$WHEEL"
else
  step "repacking it as a pure-Python wheel for $("$PY" -c 'import platform; print(platform.python_version())')"
  "$PY" - "$WHEEL" "$TMP/out" <<'PY'
import base64, hashlib, os, re, sys, zipfile

src, out_dir = sys.argv[1], sys.argv[2]
os.makedirs(out_dir, exist_ok=True)
name = os.path.basename(src).split('-')
dist, version = name[0], name[1]
info = f'{dist}-{version}.dist-info'
out = os.path.join(out_dir, f'{dist}-{version}-py3-none-any.whl')
requires = ['Pillow>=7.1', 'matplotlib', 'pycocotools>=2.0.2', 'termcolor>=1.1', 'yacs>=0.1.8', 'tabulate',
            'cloudpickle', 'tqdm>4.29.0', 'omegaconf>=2.1,<2.4', 'hydra-core>=1.1', 'packaging', 'fvcore',
            'iopath']
record = []

def keep(path):
    if path.startswith(info + '/'):
        return not path.endswith('/RECORD')
    if not path.startswith('detectron2/'):  # the wheel's top-level `tools` package: detectron2's scripts
        return False
    return not re.search(r'\.(so|pyd|dylib)$', path)  # the compiled extension for CPython 3.10

with zipfile.ZipFile(src) as zin, zipfile.ZipFile(out, 'w', zipfile.ZIP_DEFLATED) as zout:
    for item in zin.infolist():
        if item.is_dir() or not keep(item.filename):
            continue
        data = zin.read(item.filename)
        if item.filename == f'{info}/WHEEL':
            text = data.decode()
            text = re.sub(r'^Root-Is-Purelib: .*$', 'Root-Is-Purelib: true', text, flags=re.M)
            text = re.sub(r'^Tag: .*$', 'Tag: py3-none-any', text, flags=re.M)
            data = text.encode()
        elif item.filename == f'{info}/METADATA':
            lines = [l for l in data.decode().split('\n') if not l.startswith('Requires-Dist:')]
            at = next(i for i, l in enumerate(lines) if l.startswith('Requires-Python') or l == '') + 1
            lines[at:at] = [f'Requires-Dist: {r}' for r in requires]
            data = '\n'.join(lines).encode()
        elif item.filename == f'{info}/top_level.txt':
            data = b'detectron2\n'
        zout.writestr(item, data)
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b'=').decode()
        record.append(f'{item.filename},sha256={digest},{len(data)}')
    record.append(f'{info}/RECORD,,')
    zout.writestr(f'{info}/RECORD', '\n'.join(record) + '\n')
print(out)
PY
  $PIP --no-deps --force-reinstall "$TMP"/out/*.whl
fi

step "checking the install"
check_d2
step "done"
