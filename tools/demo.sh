#!/usr/bin/env bash
# The main job on a fresh machine, no download needed, along the route of the
# COCO configs (a backbone pretrained as a classifier, then the detector):
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
# shellcheck source=tools/demo_steps.sh
source tools/demo_steps.sh

if [ ! -f "$DATA/annotations/instances_val2017.json" ]; then
  "$PY" tools/make_synthetic.py coco "$DATA"
fi
make_work_dir
pretrain_train_test "$DATA" 'RetinaNet'
grep -E "Average (Precision|Recall)|bbox_mAP" "$WORK/test.log"
# mmdet's per-class AP table (classwise=True)
grep -E "^[|+]" "$WORK/test.log"
grep -oE "objects found with the right class.*" "$WORK/test.log"
echo "pictures of the detections: $WORK/show/ ($(ls "$WORK/show" | wc -l) images)"
finish_demo
