#!/usr/bin/env bash
# The main job on a fresh machine, no download needed: generate the
# synthetic COCO-format shapes data set, train RetinaNet with a CMT-Ti
# backbone on it (tools/train.py), evaluate it (tools/test.py: the COCO AP
# table, per class too), draw its detections (work_dirs/demo/show/) and plot
# the training curves (work_dirs/demo/training_curves.png).
# Run after tools/setup.sh (the README's one-liner does both).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
CONFIG=configs/retinanet_cmt_ti_fpn_synthetic.py
DATA=data/synthetic_coco
WORK=${WORK_DIR:-work_dirs/demo}

if [ ! -f "$DATA/annotations/instances_val2017.json" ]; then
  "$PY" tools/make_synthetic_coco.py "$DATA"
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
grep -E "Average (Precision|Recall)|bbox_mAP" "$WORK/test.log"
# mmdet's per-class AP table (classwise=True)
grep -E "^[|+]" "$WORK/test.log"
echo "pictures of the detections: $WORK/show/ ($(ls "$WORK/show" | wc -l) images)"
"$PY" tools/plot_curves.py "$WORK"
echo "checkpoint: $CKPT"
