#!/usr/bin/env bash
# The prepared GPU check (benchmarks/gpu_check.py): per-config correctness against cuDNN, the speed table,
# a VGG-D training step, the command line on CUDA, JPEG decoding on the device; each phase in its own
# process under its own budget, its rows kept in $OUT/gpu_check/ (or runs/gpu_check/) as they come.
#
# Prepare here (no GPU needed): `make gpu-wheels` puts in .whl/ the wheels a bare GPU machine with torch
# and triton lacks (this package, webdataset and its braceexpand). Then, from the repo root on the GPU
# machine (with .whl/ carried along):  bash benchmarks/gpu_check.sh [--workers 4]
set -uo pipefail
cd "$(dirname "$0")/.."
if ! compgen -G ".whl/vgg_toolkit-*.whl" >/dev/null; then
  echo "gpu_check.sh: no .whl/vgg_toolkit-*.whl: run 'make gpu-wheels' before coming here (and carry .whl)" >&2
  exit 2
fi
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/vggtk-site .whl/*.whl \
  || { echo "gpu_check.sh: installing .whl/ failed" >&2; exit 2; }
export PYTHONPATH="/tmp/vggtk-site${PYTHONPATH:+:$PYTHONPATH}"
# One import of everything before the long parts: a missing module is said in seconds, not minutes in.
python3 -c "import vgg_toolkit, vgg_toolkit.kernels.fused_conv, vgg_toolkit.cli, webdataset; vgg_toolkit.get_host()" \
  || { echo "gpu_check.sh: the installed package does not import (above)" >&2; exit 2; }
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
# The driver checks that the installed code is this tree's, prints its estimate, then runs each phase
# under its budget (under 9 minutes in all); it exits 1 if any phase failed, with every table printed.
python3 benchmarks/gpu_check.py "$@"
