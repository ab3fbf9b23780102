#!/usr/bin/env bash
# The main job on a fresh machine, no download needed, along the card's route:
# generate the synthetic COCO-format shapes data set; pretrain CMT-Ti as a
# classifier on crops of its shapes and save it in the layout of the released
# ImageNet checkpoints (tools/pretrain_shapes.py); train RetinaNet with that
# backbone (tools/train.py, which loads it by init_cfg and validates after
# every epoch); evaluate it (tools/test.py: the COCO AP table, per class, and
# the objects found), draw its detections (WORK/show/) and plot the training
# curves (WORK/training_curves.png). WORK is work_dirs/demo, or a new
# work_dirs/demo_<time> when that exists: an earlier run is never touched.
# Run after tools/setup.sh (the README's one-liner does both).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
CONFIG=configs/retinanet_cmt_ti_fpn_synthetic.py
DATA=data/synthetic_coco
WORK=${WORK_DIR:-work_dirs/demo}
START=$SECONDS

if [ ! -f "$DATA/annotations/instances_val2017.json" ]; then
  "$PY" tools/make_synthetic_coco.py "$DATA"
fi
if [ -e "$WORK" ]; then
  # never overwrite an earlier run
  WORK="${WORK}_$(date +%Y%m%d_%H%M%S)"
fi
mkdir -p "$WORK"
PRETRAINED="$WORK/cmt_ti_shapes.pth"
echo "[demo] 1/3 pretraining CMT-Ti on crops of the shapes (log: $WORK/pretrain.log)"
if ! "$PY" tools/pretrain_shapes.py "$DATA" "$PRETRAINED" 2>&1 |
    tee "$WORK/pretrain.log" |
    grep --line-buffered -E "^([0-9]+ training crops|epoch|saved) "; then
  tail -30 "$WORK/pretrain.log"
  exit 1
fi
echo "[demo] 2/3 training RetinaNet from it (log: $WORK/<time>/<time>.log)"
"$PY" tools/train.py "$CONFIG" --work-dir "$WORK" \
  --cfg-options model.backbone.init_cfg.checkpoint="$PRETRAINED"
CKPT=$(cat "$WORK/last_checkpoint")
echo "[demo] 3/3 evaluating $CKPT (log: $WORK/test.log)"
"$PY" tools/test.py "$CONFIG" "$CKPT" --work-dir "$WORK/test" \
  --show-dir "$WORK/show" \
  > "$WORK/test.log" 2>&1 || { tail -30 "$WORK/test.log"; exit 1; }
grep -E "Average (Precision|Recall)|bbox_mAP" "$WORK/test.log"
# mmdet's per-class AP table (classwise=True)
grep -E "^[|+]" "$WORK/test.log"
grep -oE "objects found with the right class.*" "$WORK/test.log"
"$PY" tools/metafile_tables.py demos
echo "pictures of the detections: $WORK/show/ ($(ls "$WORK/show" | wc -l) images)"
"$PY" tools/plot_curves.py "$WORK"
echo "checkpoint: $CKPT"
echo "[demo] done in $(( (SECONDS - START) / 60 )) min $(( (SECONDS - START) % 60 )) s"
