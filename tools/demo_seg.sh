#!/usr/bin/env bash
# Segmentation on a fresh machine, no download needed: generate the
# synthetic ADE20K-format shapes data set, train Semantic FPN with a CMT-Ti
# backbone on it (tools/train.py), evaluate it (tools/test.py: mmseg's mIoU
# table), draw its predictions (work_dirs/demo_seg/show/) and plot the
# training curves (work_dirs/demo_seg/training_curves.png).
# Run after tools/setup.sh (the README's one-liner does both).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
CONFIG=configs/fpn_cmt_ti_synthetic_ade.py
DATA=data/synthetic_ade
WORK=${WORK_DIR:-work_dirs/demo_seg}

if [ ! -d "$DATA/annotations/validation" ]; then
  "$PY" tools/make_synthetic_ade.py "$DATA"
fi
if [ -e "$WORK" ]; then
  # never overwrite an earlier run
  WORK="${WORK}_$(date +%Y%m%d_%H%M%S)"
fi
"$PY" tools/train.py "$CONFIG" --work-dir "$WORK"
CKPT=$(cat "$WORK/last_checkpoint")
echo "evaluating $CKPT (log: $WORK/test.log)"
"$PY" tools/test.py "$CONFIG" "$CKPT" --work-dir "$WORK/test" \
  --show-dir "$WORK/show" > "$WORK/test.log" 2>&1 || {
  tail -30 "$WORK/test.log"; exit 1; }
# mmseg's per-class table and the summary line (aAcc, mIoU, mAcc)
awk '/per class results/ {on = 1; next}
     on && /^[+|]/ {print; seen = 1; next}
     on && seen {exit}' "$WORK/test.log"
grep -oE "aAcc: [0-9.]+ +mIoU: [0-9.]+ +mAcc: [0-9.]+" "$WORK/test.log" | tail -1
PICTURES="$WORK/show/vis_data/vis_image"
echo "pictures (ground truth | prediction): $PICTURES/ ($(ls "$PICTURES" | wc -l) images)"
"$PY" tools/plot_curves.py "$WORK"
echo "checkpoint: $CKPT"
