#!/usr/bin/env bash
# The linters CI runs (and .pre-commit-config.yaml runs per commit): ruff for lint, import order and format,
# clang-format for the C++/CUDA sources. Exit status non-zero on any violation.
#   bash tools/lint.sh          check
#   bash tools/lint.sh --fix    fix what the tools can fix (ruff --fix, ruff format, clang-format -i)
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
SCRIPTS=$($PY -c 'import sysconfig; print(sysconfig.get_path("scripts"))')
CLANG_FORMAT=${CLANG_FORMAT:-$(command -v clang-format || echo "$SCRIPTS/clang-format")}
[ -x "$CLANG_FORMAT" ] || { echo "[lint] clang-format not found (bash tools/install.sh installs it)"; exit 2; }
CSRC=$(git ls-files 'featup_plugin/ops/csrc/*.cpp' 'featup_plugin/ops/csrc/*.cu' 'featup_plugin/ops/csrc/*.cuh' \
       'featup_plugin/ops/csrc/*.hpp' 'featup_plugin/ops/csrc/*.h' 2>/dev/null || find featup_plugin/ops/csrc -type f)
status=0
if [ "${1:-}" = "--fix" ]; then
  $PY -m ruff check --fix . || status=1
  $PY -m ruff format . || status=1
  "$CLANG_FORMAT" -i $CSRC || status=1
  exit $status
fi
echo "[lint] ruff check";  $PY -m ruff check . || status=1
echo "[lint] ruff format --check"; $PY -m ruff format --check . || status=1
echo "[lint] clang-format"; "$CLANG_FORMAT" --dry-run --Werror $CSRC || status=1
[ $status -eq 0 ] && echo "[lint] clean" || echo "[lint] violations found (bash tools/lint.sh --fix fixes most)"
exit $status
