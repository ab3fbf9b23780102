#!/usr/bin/env bash
# Sets up everything mmcmt needs in a virtual environment inside the checkout
# (.venv): torch 2.13.0 (CPU), mmcv 2.1.0 built from source with its ops,
# mmengine, mmdet 3.3.0, mmsegmentation 1.2.2, pycocotools, onnx and
# onnxruntime (the optional export extras, which the tests cover), psutil
# and openmim (for mmdet's benchmark tool and `mim`, also tested) and mmcmt
# itself (editable). Safe to run again: what is already installed is kept, so a second
# run takes seconds and never rebuilds mmcv.
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=${MMCMT_VENV:-.venv}
if [ ! -x "$VENV/bin/python" ]; then
  echo "[setup] creating virtual environment $VENV"
  python3 -m venv "$VENV"
fi
PY="$VENV/bin/python"
PIP=("$PY" -m pip install --disable-pip-version-check -q)

has() { "$PY" - "$@" <<'PY' 2>/dev/null
import importlib.metadata as md, sys
for spec in sys.argv[1:]:
    name, _, version = spec.partition('==')
    try:
        got = md.version(name)
    except md.PackageNotFoundError:
        sys.exit(1)
    if version and got.split('+')[0] != version:
        sys.exit(1)
PY
}

if ! has torch==2.13.0; then
  echo "[setup] installing torch 2.13.0"
  "${PIP[@]}" torch==2.13.0
fi
if ! has ninja mmengine; then
  echo "[setup] installing build tools and mmengine"
  "${PIP[@]}" 'setuptools>=77,<81' wheel ninja 'mmengine>=0.10,<1'
fi
if ! has mmcv==2.1.0 || ! "$PY" -c 'import mmcv.ops' 2>/dev/null; then
  echo "[setup] building mmcv 2.1.0 with CPU ops from source: about 15 minutes on 2 cores the first time (pip caches the wheel for later set-ups)"
  # pip is quiet while it compiles: say every minute that the build is alive
  ( start=$SECONDS; while sleep 60; do
      echo "[setup]   still building mmcv: $(( (SECONDS - start) / 60 )) min so far"
    done ) &
  heartbeat=$!
  trap 'kill $heartbeat 2>/dev/null || true' EXIT
  MMCV_WITH_OPS=1 MAX_JOBS=${MAX_JOBS:-2} "${PIP[@]}" --no-build-isolation mmcv==2.1.0
  kill $heartbeat 2>/dev/null || true
fi
if ! has mmdet==3.3.0 mmsegmentation==1.2.2 pycocotools ftfy regex pytest; then
  echo "[setup] installing mmdet, mmsegmentation, pycocotools and test tools"
  "${PIP[@]}" mmdet==3.3.0 mmsegmentation==1.2.2 pycocotools ftfy regex pytest
fi
if ! has psutil openmim; then
  # psutil: mmdet's own tools/analysis_tools/benchmark.py needs it.
  # openmim (`mim train/test mmdet ...`), tested too. Its dependency
  # opendatalab (only for `mim download` of data sets) pins setuptools 60
  # and older requests, which would break the build tools above, so mim is
  # installed without it and with its other dependencies by name.
  echo "[setup] installing psutil and openmim (mmdet's benchmark tool, mim)"
  "${PIP[@]}" psutil click colorama model-index pandas requests rich tabulate
  "${PIP[@]}" --no-deps openmim
fi
if ! has onnx onnxruntime; then
  # the optional `export` extras (tools/export_onnx.py), tested too
  echo "[setup] installing onnx and onnxruntime (optional export extras)"
  "${PIP[@]}" onnx onnxruntime
fi
if ! has mmcmt; then
  echo "[setup] installing mmcmt (editable)"
  "${PIP[@]}" --no-build-isolation --no-deps -e .
fi
echo "[setup] ready: $("$PY" -c 'import torch, mmcv, mmdet, mmseg; print(f"torch {torch.__version__}, mmcv {mmcv.__version__}, mmdet {mmdet.__version__}, mmseg {mmseg.__version__}")')"
