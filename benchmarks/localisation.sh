#!/usr/bin/env bash
# The localisation benchmark (the paper's Tables 8 and 9, on garments pasted on real photos):
# a classifier, then SCR and PCR heads fine-tuned from it (all layers, and the FC layers only),
# each tested with protocol 1 (centre crop) and protocol 2 (dense, merged, top-5 classes from the
# classifier), against two baselines measured in the same run: the centre box of the mean training
# box, and a thresholded Grad-CAM box from the classifier. Usage: benchmarks/localisation.sh OUT_DIR
set -euo pipefail
OUT=${1:?usage: benchmarks/localisation.sh OUT_DIR}
V=${VGGTK:-.venv/bin/vggtk}
mkdir -p "$OUT"
log() { echo "$(date -u +%FT%TZ) $*" | tee -a "$OUT/timeline.txt"; }

log "shards"
$V shards create garments-on-photos "$OUT/shards" --samples-per-shard 5000
log "classifier"
$V train --data "$OUT/shards" --run-dir "$OUT/cls" --epochs 40 --batch-size 64 --lr 0.02 --lr-patience 3
for head in scr pcr; do
  for part in all fc; do
    log "$head $part"
    $V train --data "$OUT/shards" --run-dir "$OUT/$head-$part" --head "$head" --init-from "$OUT/cls/best" \
      --finetune "$part" --epochs 15 --batch-size 64 --lr 0.01
  done
done
for head in scr pcr; do
  for part in all fc; do
    log "eval $head $part"
    $V eval "$OUT/$head-$part/best" --data "$OUT/shards" --task localisation --methods center,dense \
      --classifier "$OUT/cls/best" --multi-scale --out "$OUT/eval-$head-$part.json" \
      --boxes-png "$OUT/boxes-$head-$part.png"
  done
done
log "eval baselines"
$V eval "$OUT/scr-all/best" --data "$OUT/shards" --task localisation --methods center-box,gradcam-box \
  --classifier "$OUT/cls/best" --out "$OUT/eval-baselines.json" --boxes-png "$OUT/boxes-baselines.png"
log "done"
