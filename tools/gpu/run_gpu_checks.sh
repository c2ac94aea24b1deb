#!/usr/bin/env bash
# All GPU checks in one go (for a machine with an NVIDIA GPU, nvcc and torch):
#   bash tools/gpu/run_gpu_checks.sh [OUT_DIR]
# JIT-builds the extension with CUDA, runs the CUDA self-check, the CUDA tests, compute-sanitizer
# (memcheck + racecheck) on small fwd+bwd runs, and the op benchmark on the GPU. Logs go to OUT_DIR.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT_DIR=${1:-${OUT:-/tmp/featup_gpu_checks}}
mkdir -p "$OUT_DIR"
export PYTHONUNBUFFERED=1 FEATUP_OPS=jit MAX_JOBS=${MAX_JOBS:-16}
export TORCH_EXTENSIONS_DIR=${TORCH_EXTENSIONS_DIR:-/tmp/featup_torch_ext}
if [ -z "${TORCH_CUDA_ARCH_LIST:-}" ]; then
  export TORCH_CUDA_ARCH_LIST=$(python3 -c "import torch; c=torch.cuda.get_device_capability(); print(f'{c[0]}.{c[1]}')")
fi
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)"

echo "== build"
t0=$(date +%s)
python3 -c "import featup_plugin.ops as o; print('backend:', o.backend_name())" 2>&1 | tail -3
echo "build took $(( $(date +%s) - t0 )) s"

echo "== self-check"
python3 tools/gpu/cuda_selfcheck.py 2>&1 | tee "$OUT_DIR/selfcheck.txt" | tail -6

echo "== pytest (CUDA tests and the rest, except the CPU-only JIT rebuild)"
python3 -m pytest tests -q -p no:cacheprovider --deselect tests/ops/test_adaptive_conv.py::test_jit_build_path 2>&1 \
  | tee "$OUT_DIR/pytest.txt" | tail -6

echo "== compute-sanitizer"
cat > /tmp/featup_sanitize.py <<'PY'
import torch
from featup_plugin.ops import adaptive_conv, local_correlation
for dtype in (torch.float32, torch.float16, torch.float64):
    for (b, c, h, w, k) in [(2, 19, 13, 37, 7), (1, 70, 9, 8, 3), (1, 5, 6, 5, 9)]:
        x = torch.randn(b, c, h + k - 1, w + k - 1, device='cuda', dtype=dtype, requires_grad=True)
        f = torch.randn(b, h, w, k, k, device='cuda', dtype=dtype, requires_grad=True)
        adaptive_conv(x, f).sum().backward()
        g = torch.randn(b, c, h, w, device='cuda', dtype=dtype, requires_grad=True)
        local_correlation(g, x).sum().backward()
from featup_plugin.ops import PacConv2d, PacConvTranspose2d
for dtype in (torch.float32, torch.float64):
    x = torch.randn(2, 19, 13, 17, device='cuda', dtype=dtype, requires_grad=True)
    g = torch.randn(2, 3, 13, 17, device='cuda', dtype=dtype, requires_grad=True)
    PacConv2d(19, 7, 5, stride=2, padding=2, dilation=(1, 2)).to('cuda', dtype)(x, g).sum().backward()
    PacConvTranspose2d(19, 7, 3, stride=2, padding=1, output_padding=1).to('cuda', dtype)(
        x, torch.randn(2, 3, 26, 34, device='cuda', dtype=dtype)).sum().backward()
torch.cuda.synchronize()
print('sanitizer workload done')
PY
for tool in memcheck racecheck; do
  compute-sanitizer --tool $tool --error-exitcode 3 python3 /tmp/featup_sanitize.py > "$OUT_DIR/sanitizer_$tool.txt" 2>&1
  echo "$tool rc=$? :: $(grep -E 'ERROR SUMMARY|RACECHECK SUMMARY|workload done' "$OUT_DIR/sanitizer_$tool.txt" | tr '\n' ' ')"
done

echo "== benchmark"
python3 tools/benchmarks/benchmark_ops.py --device cuda 2>&1 | tee "$OUT_DIR/bench_cuda.txt"
python3 tools/benchmarks/benchmark_pac.py --device cuda 2>&1 | tee "$OUT_DIR/bench_pac_cuda.txt"
