#!/usr/bin/env bash
# Sets up everything mmcmt needs in a virtual environment inside the checkout.
#
#   bash tools/setup.sh                 # newest stack, into .venv
#   bash tools/setup.sh --stack torch2.1  # oldest supported stack, .venv-torch2.1
#
# newest:   torch 2.13.0 (CPU), numpy 2.x
# torch2.1: torch 2.1.2 (the package index's build, which runs on a CPU),
#           numpy 1.x: the stack most mmdet 3.3 users have
# Both: mmcv 2.1.0 built from source with its ops, mmengine 0.10, mmdet
# 3.3.0, mmsegmentation 1.2.2, pycocotools, onnx and onnxruntime (the optional
# export extras, which the tests cover), psutil and openmim (for mmdet's
# benchmark tool and `mim`, also tested), the linters (tools/lint.sh) and
# mmcmt itself (editable).
#
# Safe to run again: what is installed is kept, so a second run takes seconds.
# The mmcv wheel is built once per (Python, torch) and kept in
# ~/.cache/mmcmt/mmcv-wheels/<python>-torch<version>/: pip's own wheel cache
# is keyed on mmcv's source only and would hand a wheel compiled against one
# torch to the other (`import mmcv.ops`: undefined symbol), so it is not used.
set -euo pipefail
cd "$(dirname "$0")/.."

STACK=${MMCMT_STACK:-newest}
while [ $# -gt 0 ]; do
  case "$1" in
    --stack) STACK=${2:?--stack needs a name: newest or torch2.1}; shift 2 ;;
    --stack=*) STACK=${1#--stack=}; shift ;;
    *) echo "tools/setup.sh: unknown argument '$1' (use --stack newest|torch2.1)" >&2; exit 2 ;;
  esac
done
case "$STACK" in
  newest)   TORCH=torch==2.13.0; NUMPY='numpy>=2,<3'; DEFAULT_VENV=.venv ;;
  torch2.1) TORCH=torch==2.1.2;  NUMPY='numpy>=1.24,<2'; DEFAULT_VENV=.venv-torch2.1 ;;
  *) echo "tools/setup.sh: unknown stack '$STACK' (use newest or torch2.1)" >&2; exit 2 ;;
esac
VENV=${MMCMT_VENV:-$DEFAULT_VENV}
if [ ! -x "$VENV/bin/python" ]; then
  echo "[setup] creating virtual environment $VENV (stack $STACK)"
  python3 -m venv "$VENV"
fi
PY="$VENV/bin/python"
# every install keeps the stack's torch and numpy: nothing may upgrade them
CONSTRAINTS="$VENV/mmcmt-constraints.txt"
printf '%s\n%s\n' "$TORCH" "$NUMPY" > "$CONSTRAINTS"
PIP=("$PY" -m pip install --disable-pip-version-check -q -c "$CONSTRAINTS")

has() { "$PY" -I - "$@" <<'PY' 2>/dev/null  # -I: not the checkout's egg-info
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

# pch_compiler DIR: write DIR/c++, the C++ compiler for mmcv's build. The
# first op that includes mmcv's common header (63 of its 77 files do) also
# precompiles that header with its own flags; GCC uses the precompiled
# header where the flags match (every op's do) and otherwise reads the
# header as usual. Each op then compiles in 5 s of CPU instead of 24.
pch_compiler() {
  mkdir -p "$1"
  cat > "$1/c++" <<SH
#!/usr/bin/env bash
real=$(command -v "${CXX:-c++}")
SH
  cat >> "$1/c++" <<'SH'
src= args=()
for ((i = 1; i <= $#; i++)); do
  case "${!i}" in
    -MF|-MT|-MQ|-o) i=$((i + 1)) ;;
    -MMD|-MD|-c) ;;
    *.cpp) src=${!i} ;;
    *) args+=("${!i}") ;;
  esac
done
header=${src%/ops/csrc/pytorch/*}/ops/csrc/common/pytorch_cpp_helper.hpp
if [[ $src == */ops/csrc/pytorch/* && -f $header ]]; then
  (
    flock 9
    [ -f "$header.gch" ] || { "$real" "${args[@]}" -x c++-header "$header" \
      -o "$header.gch.part" && mv "$header.gch.part" "$header.gch"; }
  ) 9> "$header.lock"
fi
exec "$real" "$@"
SH
  chmod +x "$1/c++"
}

if ! has "$TORCH"; then
  echo "[setup] installing $TORCH"
  "${PIP[@]}" "$TORCH" "$NUMPY"
fi
if ! has ninja mmengine numpy; then
  echo "[setup] installing build tools, numpy and mmengine"
  "${PIP[@]}" 'setuptools>=77,<81' wheel ninja "$NUMPY" 'mmengine>=0.10,<0.11'
fi
if ! has mmcv==2.1.0 || ! "$PY" -c 'import mmcv.ops' 2>/dev/null; then
  WHEELS="${XDG_CACHE_HOME:-$HOME/.cache}/mmcmt/mmcv-wheels/$("$PY" -c \
    'import sys, torch; print(f"py{sys.version_info[0]}{sys.version_info[1]}-torch{torch.__version__}")')"
  if ! ls "$WHEELS"/mmcv-2.1.0-*.whl >/dev/null 2>&1; then
    echo "[setup] building mmcv 2.1.0 with CPU ops from source for $(basename "$WHEELS"): about 8 minutes on 2 cores (kept in $WHEELS)"
    # pip is quiet while it compiles: say every minute that the build is alive
    ( start=$SECONDS; while sleep 60; do
        echo "[setup]   still building mmcv: $(( (SECONDS - start) / 60 )) min so far"
      done ) &
    heartbeat=$!
    trap 'kill $heartbeat 2>/dev/null || true' EXIT
    build=$(mktemp -d)
    pch_compiler "$build/bin"
    # Python's own flags without -g: debug information took half of each
    # file's compile time (48 against 22 s of CPU for ops/nms.cpp) and most
    # of the wheel. (A CFLAGS variable replaces Python's flags, -O3 too.)
    CXX="$build/bin/c++" CFLAGS="-DNDEBUG -fwrapv -O3 -Wall -g0" \
    MMCV_WITH_OPS=1 MAX_JOBS=${MAX_JOBS:-2} "$PY" -m pip wheel \
      --disable-pip-version-check -q --no-cache-dir --no-build-isolation \
      --no-deps -w "$build" mmcv==2.1.0
    mkdir -p "$WHEELS"
    mv "$build"/mmcv-2.1.0-*.whl "$WHEELS"/
    rm -rf "$build"
    kill $heartbeat 2>/dev/null || true
  fi
  echo "[setup] installing mmcv 2.1.0 from $WHEELS"
  "${PIP[@]}" --force-reinstall --no-deps "$WHEELS"/mmcv-2.1.0-*.whl
  "${PIP[@]}" "$(ls "$WHEELS"/mmcv-2.1.0-*.whl)"  # its dependencies
  "$PY" -c 'import mmcv.ops' || { echo "[setup] mmcv.ops does not import: remove $WHEELS and run again" >&2; exit 1; }
fi
if ! has mmdet==3.3.0 mmsegmentation==1.2.2 pycocotools ftfy regex pytest \
    flake8==7.5.0 isort==9.0.2 yapf==0.43.0; then
  # flake8, isort, yapf: the linters of tools/lint.sh, pinned so that
  # every machine formats alike
  echo "[setup] installing mmdet, mmsegmentation, pycocotools, test tools and linters"
  "${PIP[@]}" mmdet==3.3.0 mmsegmentation==1.2.2 pycocotools ftfy regex pytest \
    flake8==7.5.0 isort==9.0.2 yapf==0.43.0
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
  # the optional `export` extras (tools/export_*_onnx.py), tested too
  echo "[setup] installing onnx and onnxruntime (optional export extras)"
  "${PIP[@]}" onnx onnxruntime
fi
if ! has mmcmt; then
  echo "[setup] installing mmcmt (editable)"
  "${PIP[@]}" --no-build-isolation --no-deps -e .
fi
echo "[setup] ready ($STACK, $VENV): $("$PY" -c 'import numpy, torch, mmcv, mmdet, mmseg; print(f"torch {torch.__version__}, mmcv {mmcv.__version__}, mmdet {mmdet.__version__}, mmseg {mmseg.__version__}, numpy {numpy.__version__}")')"
