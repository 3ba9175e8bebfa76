#!/usr/bin/env bash
# The localisation benchmark where the paper's protocols can differ (its Tables 8 and 9): garments of any
# size anywhere on 128-pixel scenes, half with a distractor of another class (source garments-in-scenes).
# VGG-A at a quarter width, input 64 at a fixed S = 96 (pool5 2x2): a classifier, then SCR and PCR heads
# fine-tuned from it (all layers, and the FC layers only) for each seed; each tested with protocol 1 (the
# centre crop), protocol 2 single- and multi-scale ({S-32, S}) with OverFeat's merge and with the earlier
# most-supported rule; and the centre-box and Grad-CAM baselines, in the same run.
#   benchmarks/localisation_scenes.sh OUT_DIR [SCALE=1.0] [SEEDS="0 1"]
# SCALE multiplies the set's sizes (8,000 / 1,000 / 2,000) and epochs: 0.1 is the pilot.
set -euo pipefail
OUT=${1:?usage: benchmarks/localisation_scenes.sh OUT_DIR [SCALE] [SEEDS]}
SCALE=${2:-1.0}
SEEDS=${3:-"0 1"}
V=${VGGTK:-.venv/bin/vggtk}
mkdir -p "$OUT"
log() { echo "$(date -u +%FT%TZ) $*" | tee -a "$OUT/timeline.txt"; }
n() { python3 -c "print(max(1, round($1 * $SCALE)))"; }
count() { python3 -c "print(max(10, round($1 * $SCALE / 10) * 10))"; }  # a multiple of the 10 classes

cat > "$OUT/net.toml" <<TOML
scale = 96
[model]
input_size = 64
width = 0.25
fc_dim = 256
TOML
log "shards (scale $SCALE)"
$V shards create garments-in-scenes "$OUT/shards" --source-option "train=$(count 8000)" \
  --source-option "val=$(count 1000)" --source-option "test=$(count 2000)" --samples-per-shard 2000
log "classifier"
$V train --data "$OUT/shards" --config "$OUT/net.toml" --run-dir "$OUT/cls" --epochs "$(n 30)" --batch-size 64 \
  --lr 0.02 --lr-patience 3
for seed in $SEEDS; do
  for head in scr pcr; do
    for part in all fc; do
      log "$head $part seed $seed"
      $V train --data "$OUT/shards" --config "$OUT/net.toml" --run-dir "$OUT/$head-$part-$seed" --head "$head" \
        --init-from "$OUT/cls/best" --finetune "$part" --epochs "$(n 15)" --batch-size 64 --lr 0.01 --seed "$seed"
      for scales in single multi; do
        extra=$([ "$scales" = multi ] && echo --multi-scale || true)
        for merge in overfeat support; do
          log "eval $head $part seed $seed $scales $merge"
          $V eval "$OUT/$head-$part-$seed/best" --data "$OUT/shards" --task localisation --methods center,dense \
            --classifier "$OUT/cls/best" --merge "$merge" $extra --out "$OUT/eval-$head-$part-$seed-$scales-$merge.json"
        done
      done
    done
  done
done
log "eval baselines"
$V eval "$OUT/scr-all-${SEEDS%% *}/best" --data "$OUT/shards" --task localisation --methods center-box,gradcam-box \
  --classifier "$OUT/cls/best" --out "$OUT/eval-baselines.json"
$V eval "$OUT/cls/best" --data "$OUT/shards" --methods center,dense --out "$OUT/eval-classifier.json"
log "done"
