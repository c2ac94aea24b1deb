#!/usr/bin/env bash
# Sets up everything on a fresh machine (Python 3.11, no GPU needed):
#   bash tools/install.sh
# Installs into the active Python (use a virtualenv if you want isolation; PYTHON=... picks the interpreter).
# Steps: the torch/torchvision pair, build tools, mmcv 2.1.0 built from source (no wheel exists for this torch;
# ~10 min on 2 cores, cached by pip afterwards), MMSegmentation and its import-time extras, timm, test and lint tools
# (pytest, ruff, clang-format, pre-commit),
# detectron2's Python package (tools/install_detectron2.sh),
# then featup_plugin itself in editable mode with its C++ extension (CUDA kernels too when nvcc is present).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
PIP="$PY -m pip install --disable-pip-version-check"
export MAX_JOBS=${MAX_JOBS:-2}

step() { echo "[install $(date +%H:%M:%S)] $*"; }

step "torch + torchvision"
# The CUDA build of torch runs on CPU too and is the one torchvision's wheels load with.
$PIP "torch==2.13.0,!=2.13.0+cpu" "torchvision==0.28.0"

step "build tools"
$PIP "setuptools<81" wheel ninja

step "mmengine + mmcv 2.1.0 (built from source with CPU ops; slow the first time)"
$PIP "mmengine>=0.10.3,<1.0"
$PIP --no-build-isolation "mmcv==2.1.0"

step "mmsegmentation + timm + test and lint tools"
$PIP "mmsegmentation==1.2.2" ftfy regex "timm>=1.0" pytest
$PIP onnx onnxruntime  # tools/deploy/export_onnx.py and its tests
# the linters of tools/lint.sh and .pre-commit-config.yaml, pinned so that CI and every machine agree
$PIP "ruff==0.17.5" "clang-format==23.1.3" "pre-commit==4.7.0"

step "detectron2 (its Python package; see tools/install_detectron2.sh)"
PYTHON="$PY" bash tools/install_detectron2.sh

step "featup_plugin (editable, builds featup_plugin._ext)"
$PIP --no-build-isolation -e .

$PY - <<'PY'
import featup_plugin, featup_plugin.ops as ops
print('featup_plugin', featup_plugin.__version__, '| op backend:', ops.backend_name())
PY
step "done"
