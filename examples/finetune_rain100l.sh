#!/usr/bin/env bash
# The paper's fine-tuning experiment (Table 3): fine-tune a pre-trained IPT on the Rain100L training pairs,
# then score Rain100L test with `ipt eval` (PSNR/SSIM on Y, no border crop; the rainy input itself scores
# 26.90 dB / 0.8384 there).
#
#   examples/finetune_rain100l.sh TRAIN_DIR TEST_DIR [OUT_DIR]
#
#   TRAIN_DIR  Rain100L training pairs: rain/ + norain/ (paired by name), or rain-*.png/norain-*.png files
#   TEST_DIR   Rain100L test pairs (same layouts); evaluation only, never trained on
#   OUT_DIR    run folder (default: runs/finetune-rain100l)
#
# Settings (environment variables; defaults = a long run for one GPU):
#   MODEL=bundled      model directory to start from (bundled = the model shipped with ipt)
#   STEPS=20000        optimizer steps        BATCH=16         patches per step (48x48 inputs)
#   LR=2e-5            the paper's fine-tuning learning rate
#   CROPS=4            random crops per decoded pair (--crops-per-image)
#   EXTRA=""           more `ipt train` flags, e.g. "--mixed-precision bf16 --num-workers 4"
#   LIMIT=""           score only the first N test images (sorted by name); empty = all 100 (the protocol)
#
# Short smoke run on a CPU:  STEPS=200 BATCH=8 LIMIT=20 examples/finetune_rain100l.sh TRAIN TEST /tmp/ft
# Output: OUT_DIR/before.json and after.json (`ipt eval --json`), OUT_DIR/run/ (checkpoints, log.jsonl, model/)
# and a summary table on stdout.
set -euo pipefail

if [ $# -lt 2 ]; then
    sed -n "2,22p" "$0" | sed 's/^# \{0,1\}//' >&2
    exit 2
fi
TRAIN=$1
TEST=$2
OUT=${3:-runs/finetune-rain100l}
MODEL=${MODEL:-bundled}
STEPS=${STEPS:-20000}
BATCH=${BATCH:-16}
LR=${LR:-2e-5}
CROPS=${CROPS:-4}
EXTRA=${EXTRA:-}
LIMIT=${LIMIT:-}
EVAL_LIMIT=()
if [ -n "$LIMIT" ]; then EVAL_LIMIT=(--limit "$LIMIT"); fi
IPT=${IPT:-ipt}
PYTHON=${PYTHON:-python}

if [ "$MODEL" = bundled ]; then
    MODEL=$("$PYTHON" -c 'from ipt.core.checkpoints.bundled import bundled_model_dir; print(bundled_model_dir())')
fi
mkdir -p "$OUT"

echo "== before fine-tuning: $MODEL on $TEST" >&2
# shellcheck disable=SC2086
"$IPT" eval --task derain --model "$MODEL" --data "$TEST" --baseline --json --quiet "${EVAL_LIMIT[@]}" > "$OUT/before.json.tmp"
mv "$OUT/before.json.tmp" "$OUT/before.json"

echo "== fine-tuning on $TRAIN: $STEPS steps, batch $BATCH, lr $LR" >&2
# shellcheck disable=SC2086
"$IPT" train --tasks derain --init-from "$MODEL" --data "$TRAIN" --max-steps "$STEPS" --batch-size "$BATCH" \
    --lr "$LR" --crops-per-image "$CROPS" --val-every 0 --save-every "$STEPS" --output-dir "$OUT/run" \
    --no-progress $EXTRA

echo "== after fine-tuning: $OUT/run/model on $TEST" >&2
"$IPT" eval --task derain --model "$OUT/run/model" --data "$TEST" --json --quiet "${EVAL_LIMIT[@]}" > "$OUT/after.json.tmp"
mv "$OUT/after.json.tmp" "$OUT/after.json"

"$PYTHON" - "$OUT" <<'EOF'
import json, sys
from pathlib import Path

out = Path(sys.argv[1])
before, after = (json.loads((out / f"{n}.json").read_text()) for n in ("before", "after"))
rows = [("rainy input", before["baseline"]), ("before fine-tuning", before), ("after fine-tuning", after)]
print(f"Rain100L test ({after['n']} images, {after['layout']}): PSNR-Y / SSIM-Y")
for name, r in rows:
    print(f"  {name:<20} {r['psnr_y']:6.2f} dB  {r['ssim_y']:.4f}")
EOF
