#!/usr/bin/env bash
# All GPU checks in one go, for a machine with an NVIDIA GPU, nvcc and a CUDA build of torch:
#   bash tools/gpu/run_gpu_checks.sh [OUT_DIR]          (PYTHON=/path/to/python to pick the interpreter)
# Steps: preflight (GPU, CUDA torch, nvcc, compute-sanitizer), a strict JIT build with CUDA (FEATUP_OPS=jit never
# falls back), the CUDA self-check (forward, backward, streams, second GPU, determinism, autocast), the CUDA tests
# and the ops tests (compile / export / registration), compute-sanitizer memcheck + racecheck, the GPU benchmarks.
# Writes OUT_DIR/summary.txt (PASS/FAIL per step, then the benchmark tables) and one log per step.
# Exit status: 2 at once when no GPU / CUDA build / nvcc is there or the build has no CUDA kernels;
# 1 when any later step fails; 0 only when every step passed.
set -uo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$ROOT"
PY=${PYTHON:-python3}
OUT_DIR=${1:-${OUT:-/tmp/featup_gpu_checks}}
mkdir -p "$OUT_DIR"
SUMMARY="$OUT_DIR/summary.txt"
: >"$SUMMARY"
export PYTHONUNBUFFERED=1 FEATUP_OPS=jit
export MAX_JOBS=${MAX_JOBS:-$(nproc)}
export TORCH_EXTENSIONS_DIR=${TORCH_EXTENSIONS_DIR:-/tmp/featup_torch_ext}
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
failed=0
start=$(date +%s)

note() { echo "$*" | tee -a "$SUMMARY"; }

# step NAME CMD...: runs CMD with its output in OUT_DIR/NAME.log, records PASS/FAIL and the time in the summary.
step() {
  local name=$1
  shift
  local t0 rc
  t0=$(date +%s)
  echo "== $name"
  "$@" >"$OUT_DIR/$name.log" 2>&1
  rc=$?
  tail -n 8 "$OUT_DIR/$name.log"
  if [ "$rc" -eq 0 ]; then
    note "PASS $name ($(($(date +%s) - t0)) s)"
  else
    note "FAIL $name (rc=$rc, $(($(date +%s) - t0)) s; log: $OUT_DIR/$name.log)"
    failed=1
  fi
  return "$rc"
}

finish() {
  note "== total $(($(date +%s) - start)) s; $([ "$1" -eq 0 ] && echo 'ALL PASSED' || echo 'FAILED')"
  exit "$1"
}

# ---- preflight: fail within seconds when this is not a GPU machine
echo "== preflight"
if ! "$PY" - >"$OUT_DIR/preflight.log" 2>&1 <<'PY'; then
import sys
import torch
print('torch', torch.__version__, 'cuda', torch.version.cuda)
if torch.version.cuda is None:
    sys.exit('torch is a CPU-only build: install a CUDA build of torch')
if not torch.cuda.is_available() or torch.cuda.device_count() == 0:
    sys.exit('no CUDA device is visible (torch.cuda.is_available() is False): run this on a GPU machine')
for i in range(torch.cuda.device_count()):
    print(f'cuda:{i}', torch.cuda.get_device_name(i), 'capability', torch.cuda.get_device_capability(i))
PY
  cat "$OUT_DIR/preflight.log"
  note "FAIL preflight: $(tail -n 1 "$OUT_DIR/preflight.log")"
  finish 2
fi
cat "$OUT_DIR/preflight.log"
CUDA_HOME_FOUND=$("$PY" -c "from featup_plugin.ops._cuda_home import find_cuda_home; print(find_cuda_home() or '')")
if [ -z "$CUDA_HOME_FOUND" ]; then
  note "FAIL preflight: no CUDA toolkit (nvcc + libcudart) in \$CUDA_HOME, \$CUDA_PATH, /usr/local/cuda or on PATH"
  finish 2
fi
export CUDA_HOME="$CUDA_HOME_FOUND"
if [ -z "${TORCH_CUDA_ARCH_LIST:-}" ]; then
  TORCH_CUDA_ARCH_LIST=$("$PY" -c "import torch; c = torch.cuda.get_device_capability(); print(f'{c[0]}.{c[1]}')")
  export TORCH_CUDA_ARCH_LIST
fi
# compute-sanitizer: PATH, the toolkit, or the nvidia-cuda-sanitizer-api pip wheel
SANITIZER=$(command -v compute-sanitizer || true)
[ -z "$SANITIZER" ] && [ -x "$CUDA_HOME/bin/compute-sanitizer" ] && SANITIZER="$CUDA_HOME/bin/compute-sanitizer"
if [ -z "$SANITIZER" ]; then
  SANITIZER=$("$PY" - <<'PY'
import glob, os, site
roots = site.getsitepackages() + [site.getusersitepackages()]
hits = [p for r in roots for p in glob.glob(os.path.join(r, 'nvidia', '*sanitizer*', '**', 'compute-sanitizer'),
                                             recursive=True) if os.access(p, os.X_OK) and os.path.isfile(p)]
print(hits[0] if hits else '')
PY
  )
fi
{
  echo "nvidia-smi: $(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>&1 | head -n 2 | tr '\n' ';')"
  echo "CUDA_HOME=$CUDA_HOME TORCH_CUDA_ARCH_LIST=$TORCH_CUDA_ARCH_LIST MAX_JOBS=$MAX_JOBS python=$PY"
  echo "compute-sanitizer: ${SANITIZER:-not found (PATH, \$CUDA_HOME/bin, nvidia-cuda-sanitizer-api wheel)}"
} | tee -a "$SUMMARY"
note "PASS preflight"

# ---- build: FEATUP_OPS=jit raises on a failed build; the result must have CUDA kernels
step build "$PY" -c "
import featup_plugin.ops as o
from featup_plugin.ops import _backend
print('backend:', o.backend_name())
assert _backend.get_ext().with_cuda(), 'the JIT-built extension has no CUDA kernels'
" || finish 2

# ---- correctness
step selfcheck "$PY" tools/gpu/cuda_selfcheck.py
step pytest_cuda "$PY" -m pytest tests -q -p no:cacheprovider -m cuda
step pytest_ops "$PY" -m pytest tests/ops -q -p no:cacheprovider --deselect tests/ops/test_adaptive_conv.py::test_jit_build_path

cat >"$OUT_DIR/sanitize_workload.py" <<'PY'
import torch
from featup_plugin.ops import PacConv2d, PacConvTranspose2d, adaptive_conv, local_correlation

for dtype in (torch.float32, torch.float16, torch.float64):
    for b, c, h, w, k in [(2, 19, 13, 37, 7), (1, 70, 9, 8, 3), (1, 5, 6, 5, 9)]:
        x = torch.randn(b, c, h + k - 1, w + k - 1, device='cuda', dtype=dtype, requires_grad=True)
        f = torch.randn(b, h, w, k, k, device='cuda', dtype=dtype, requires_grad=True)
        adaptive_conv(x, f).sum().backward()
        g = torch.randn(b, c, h, w, device='cuda', dtype=dtype, requires_grad=True)
        local_correlation(g, x).sum().backward()
for dtype in (torch.float32, torch.float64):
    x = torch.randn(2, 19, 13, 17, device='cuda', dtype=dtype, requires_grad=True)
    g = torch.randn(2, 3, 13, 17, device='cuda', dtype=dtype, requires_grad=True)
    PacConv2d(19, 7, 5, stride=2, padding=2, dilation=(1, 2)).to('cuda', dtype)(x, g).sum().backward()
    PacConvTranspose2d(19, 7, 3, stride=2, padding=1, output_padding=1).to('cuda', dtype)(
        x, torch.randn(2, 3, 26, 34, device='cuda', dtype=dtype)
    ).sum().backward()
torch.cuda.synchronize()
print('sanitizer workload done')
PY
if [ -n "$SANITIZER" ]; then
  for tool in memcheck racecheck; do
    step "sanitizer_$tool" "$SANITIZER" --tool "$tool" --error-exitcode 3 "$PY" "$OUT_DIR/sanitize_workload.py"
  done
else
  note "FAIL sanitizer: compute-sanitizer not found (pip install nvidia-cuda-sanitizer-api-cu12, or a full toolkit)"
  failed=1
fi

# ---- benchmarks (tables appended to the summary)
step bench_ops "$PY" tools/benchmarks/benchmark_ops.py --device cuda
step bench_pac "$PY" tools/benchmarks/benchmark_pac.py --device cuda
step bench_selfcheck "$PY" tools/gpu/cuda_selfcheck.py --sections forward --cases 0 --bench
for b in bench_ops bench_pac bench_selfcheck; do
  {
    echo
    echo "---- $b"
    cat "$OUT_DIR/$b.log"
  } >>"$SUMMARY"
done
finish "$failed"
