#!/usr/bin/env bash
# Segmentation on a fresh machine, no download needed, along the card's
# route: generate the synthetic ADE20K-format shapes data set (and the
# COCO-format one, whose object crops pretrain the backbone); pretrain CMT-Ti
# as a classifier on those crops and save it in the layout of the released
# ImageNet checkpoints (tools/pretrain_shapes.py); train Semantic FPN with
# that backbone (tools/train.py, which loads it by init_cfg and validates
# every 100 iterations); evaluate it (tools/test.py: mmseg's mIoU table),
# draw its predictions (WORK/show/) and plot the training curves
# (WORK/training_curves.png). WORK is work_dirs/demo_seg, or a new
# work_dirs/demo_seg_<time> when that exists: an earlier run is never
# touched. Run after tools/setup.sh (the README's one-liner does both).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
CONFIG=configs/fpn_cmt_ti_synthetic_ade.py
DATA=data/synthetic_ade
CROPS=data/synthetic_coco
WORK=${WORK_DIR:-work_dirs/demo_seg}
START=$SECONDS
# shellcheck source=tools/demo_steps.sh
source tools/demo_steps.sh

if [ ! -d "$DATA/annotations/validation" ]; then
  "$PY" tools/make_synthetic.py ade "$DATA"
fi
if [ ! -f "$CROPS/annotations/instances_val2017.json" ]; then
  "$PY" tools/make_synthetic.py coco "$CROPS"
fi
make_work_dir
pretrain_train_test "$CROPS" 'Semantic FPN'
# mmseg's per-class table and the summary line (aAcc, mIoU, mAcc)
awk '/per class results/ {on = 1; next}
     on && /^[+|]/ {print; seen = 1; next}
     on && seen {exit}' "$WORK/test.log"
grep -oE "aAcc: [0-9.]+ +mIoU: [0-9.]+ +mAcc: [0-9.]+" "$WORK/test.log" | tail -1
PICTURES="$WORK/show/vis_data/vis_image"
echo "pictures (ground truth | prediction): $PICTURES/ ($(ls "$PICTURES" | wc -l) images)"
finish_demo
