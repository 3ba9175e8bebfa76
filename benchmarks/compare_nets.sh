#!/usr/bin/env bash
# The measured comparison: the classic nets of examples/vggtk-classic-nets and VGG configurations trained
# with one recipe and one epoch budget on the bundled Fashion-MNIST shards, evaluated with the same
# protocols, then `vggtk compare` (table, JSON, chart). The example package is installed by pip into
# $OUT/site (not into the venv). Usage: bash benchmarks/compare_nets.sh [EPOCHS] [OUT]
set -euo pipefail
EPOCHS=${1:-5}
OUT=${2:-runs/compare}
NETS=${NETS:-"vgg-a vgg-d alexnet zfnet googlenet resnet18 resnet34 resnet50"}
BIN=${BIN:-.venv/bin}
mkdir -p "$OUT"
"$BIN/python" -m pip install -q --disable-pip-version-check --no-index --no-deps --no-build-isolation \
  --upgrade --target "$OUT/site" examples/vggtk-classic-nets
rm -rf examples/vggtk-classic-nets/build examples/vggtk-classic-nets/*.egg-info
export PYTHONPATH="$OUT/site${PYTHONPATH:+:$PYTHONPATH}"
ckpts=() results=()
for net in $NETS; do
  start=$(date +%s)
  # the same recipe for every net: the small-image defaults of its plugin, batch 64, lr 0.02, the
  # paper's augmentation and schedule, at most $EPOCHS epochs
  "$BIN/vggtk" train --arch "$net" --run-dir "$OUT/$net" --epochs "$EPOCHS" --batch-size 64 --lr 0.02
  "$BIN/vggtk" eval "$OUT/$net/best" --methods center,dense --out "$OUT/$net/eval.json"
  echo "$net: $(( $(date +%s) - start )) s (train + eval)"
  ckpts+=("$OUT/$net/best") results+=(--results "$OUT/$net/eval.json")
done
"$BIN/vggtk" compare "${ckpts[@]}" "${results[@]}" --method dense --batch-size 64 --chart "$OUT/chart.png" \
  --out "$OUT/compare.json"
