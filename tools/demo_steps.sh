# The steps tools/demo.sh and tools/demo_seg.sh share, sourced by both after
# they set PY, CONFIG, WORK and START.

# WORK itself, or a new WORK_<time> when it exists: an earlier run is never
# touched.
make_work_dir() {
  if [ -e "$WORK" ]; then
    WORK="${WORK}_$(date +%Y%m%d_%H%M%S)"
  fi
  mkdir -p "$WORK"
}

# pretrain_train_test CROPS MODEL: pretrain CMT-Ti on the object crops of the
# COCO-format set CROPS (tools/pretrain_shapes.py, the released checkpoints'
# layout), train CONFIG's MODEL from it (loaded by init_cfg) and evaluate its
# last checkpoint into WORK/test.log, drawing into WORK/show; sets CKPT.
pretrain_train_test() {
  local crops=$1 model=$2 pretrained="$WORK/cmt_ti_shapes.pth"
  echo "[demo] 1/3 pretraining CMT-Ti on crops of the shapes (log: $WORK/pretrain.log)"
  if ! "$PY" tools/pretrain_shapes.py "$crops" "$pretrained" 2>&1 |
      tee "$WORK/pretrain.log" |
      grep --line-buffered -E "^([0-9]+ training crops|epoch|saved) "; then
    tail -30 "$WORK/pretrain.log"
    exit 1
  fi
  echo "[demo] 2/3 training $model from it (log: $WORK/<time>/<time>.log)"
  "$PY" tools/train.py "$CONFIG" --work-dir "$WORK" \
    --cfg-options model.backbone.init_cfg.checkpoint="$pretrained"
  CKPT=$(cat "$WORK/last_checkpoint")
  echo "[demo] 3/3 evaluating $CKPT (log: $WORK/test.log)"
  "$PY" tools/test.py "$CONFIG" "$CKPT" --work-dir "$WORK/test" \
    --show-dir "$WORK/show" \
    > "$WORK/test.log" 2>&1 || { tail -30 "$WORK/test.log"; exit 1; }
}

# The demos table, the curves, the checkpoint and the time since START.
finish_demo() {
  "$PY" tools/metafile_tables.py demos
  "$PY" tools/plot_curves.py "$WORK"
  echo "checkpoint: $CKPT"
  echo "[demo] done in $(( (SECONDS - START) / 60 )) min $(( (SECONDS - START) % 60 )) s"
}
