#!/usr/bin/env bash
# The prepared GPU check (benchmarks/gpu_check.py): per-config correctness against cuDNN, the speed
# table, a VGG-D training step, then JPEG decoding on the device (benchmarks/gpu_decode_check.py), and
# blocks for BENCHMARKS.md, in one command of under 9 minutes.
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
# 470 s at most: timeout stops the kernel check inside 8 minutes, and what it printed is kept (tee).
set +e
timeout 470 python3 benchmarks/gpu_check.py "$@" 2>&1 | tee "$out/gpu_check.md"
kernels=${PIPESTATUS[0]}
# Then JPEG decoding on the device (--decode device) against the workers' decode: under a minute.
timeout 60 python3 benchmarks/gpu_decode_check.py 2>&1 | tee -a "$out/gpu_check.md"
decode=${PIPESTATUS[0]}
[ "$kernels" -eq 0 ] && [ "$decode" -eq 0 ]
