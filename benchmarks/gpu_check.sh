#!/usr/bin/env bash
# The prepared GPU check (benchmarks/gpu_check.py): per-config correctness against cuDNN, the speed
# table, a VGG-D training step, and a block for BENCHMARKS.md, in one command of under 8 minutes.
#
# Prepare here (no GPU needed): `make gpu-wheels` puts in .whl/ the wheels a bare GPU machine with
# torch and triton lacks (this package, webdataset and its braceexpand). Then, from the repo root on
# the GPU machine (with .whl/ carried along):  bash benchmarks/gpu_check.sh
set -euo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-runs/gpu_check}"
mkdir -p "$out"
if compgen -G ".whl/*.whl" >/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/vggtk-site .whl/*.whl
  export PYTHONPATH="/tmp/vggtk-site${PYTHONPATH:+:$PYTHONPATH}"
fi
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
# 470 s: the check stops itself inside the 8 minutes, and what it printed is kept.
timeout 470 python3 benchmarks/gpu_check.py "$@" 2>&1 | tee "$out/gpu_check.md"
exit "${PIPESTATUS[0]}"
