#!/usr/bin/env bash
# Shortcut for tools/gpu/run_gpu_checks.sh (same arguments).
exec bash "$(dirname "${BASH_SOURCE[0]}")/gpu/run_gpu_checks.sh" "$@"
