#!/usr/bin/env bash
# Sets up everything mmcmt needs in a virtual environment inside the checkout.
#
#   bash tools/setup.sh                 # the newest stack, into .venv
#   bash tools/setup.sh --stack oldest  # the oldest supported stack, .venv-oldest
#
# The stacks (Python, torch, numpy, virtual environment) are listed in
# tools/stacks.txt: newest is Python 3.12 with torch 2.13 and numpy 2.x,
# oldest the environment OpenMMLab's install guide makes (Python 3.8,
# torch 2.1.2, numpy 1.24), what most mmdet 3.3 users have. torch comes from
# the package index (its CUDA build runs on a CPU). Both: mmcv 2.1.0 built
# from source with its ops, mmengine 0.10, mmdet 3.3.0, mmsegmentation
# 1.2.2, pycocotools, onnx and onnxruntime (the optional export extras,
# which the tests cover), psutil and openmim (for mmdet's benchmark tool and
# `mim`, also tested), the linters (tools/lint.sh) and mmcmt itself
# (editable). The stack's Python is found on PATH (python3.12, python3.8) or
# among pyenv's versions; MMCMT_PYTHON names another interpreter.
#
# Safe to run again: what is installed is kept, so a second run takes seconds.
# The mmcv wheel is built once per (Python, torch) and kept in
# ~/.cache/mmcmt/mmcv-wheels/<python>-torch<version>/: pip's own wheel cache
# is keyed on mmcv's source only and would hand a wheel compiled against one
# torch to the other (`import mmcv.ops`: undefined symbol), so it is not used.
set -euo pipefail
cd "$(dirname "$0")/.."

STACK=${MMCMT_STACK:-newest}
usage="use --stack NAME, NAME one of: $(awk '!/^#/ && NF {printf "%s ", $1}' tools/stacks.txt)"
while [ $# -gt 0 ]; do
  case "$1" in
    --stack) STACK=${2:?--stack needs a name ($usage)}; shift 2 ;;
    --stack=*) STACK=${1#--stack=}; shift ;;
    *) echo "tools/setup.sh: unknown argument '$1' ($usage)" >&2; exit 2 ;;
  esac
done
[ "$STACK" = torch2.1 ] && STACK=oldest  # its name before Python 3.8 joined
read -r PYVER TORCH_VERSION NUMPY_RANGE DEFAULT_VENV < <(
  awk -v s="$STACK" '!/^#/ && $1 == s {print $2, $3, $4, $5}' tools/stacks.txt) || {
  echo "tools/setup.sh: unknown stack '$STACK' ($usage)" >&2; exit 2; }
TORCH=torch==$TORCH_VERSION
NUMPY="numpy$NUMPY_RANGE"
VENV=${MMCMT_VENV:-$DEFAULT_VENV}

# find_python: the stack's interpreter: MMCMT_PYTHON, else python3.X on PATH
# that runs (a pyenv shim of a version not selected does not), else pyenv's
# newest 3.X
find_python() {
  local root candidate
  root=$(pyenv root 2>/dev/null || echo "$HOME/.pyenv")
  for candidate in ${MMCMT_PYTHON:-} "$(command -v "python$PYVER" || true)" \
      $(ls -d "$root"/versions/"$PYVER".*/bin/python"$PYVER" 2>/dev/null | sort -rV); do
    if [ -n "$candidate" ] && "$candidate" -c 'import venv' 2>/dev/null; then
      echo "$candidate"; return
    fi
    [ -n "${MMCMT_PYTHON:-}" ] && return  # the one named, or none
  done
}
if [ -x "$VENV/bin/python" ] && ! "$VENV/bin/python" -c \
    "import sys; sys.exit(sys.version_info[:2] != tuple(map(int, '$PYVER'.split('.'))))"; then
  if [ -f "$VENV/mmcmt-constraints.txt" ]; then  # made by this script: remade
    echo "[setup] $VENV has Python $("$VENV/bin/python" -c 'import platform; print(platform.python_version())'), stack $STACK needs $PYVER: making it anew"
    rm -rf "$VENV"
  else
    echo "tools/setup.sh: $VENV exists with another Python than $PYVER and was not made by this script; move it away or set MMCMT_VENV" >&2
    exit 2
  fi
fi
if [ ! -x "$VENV/bin/python" ]; then
  BASE=$(find_python)
  if [ -z "$BASE" ] || ! "$BASE" -c 'import venv' 2>/dev/null; then
    echo "tools/setup.sh: stack $STACK needs Python $PYVER, found none: install it (for example 'pyenv install $PYVER') or set MMCMT_PYTHON to its interpreter" >&2
    exit 2
  fi
  echo "[setup] creating virtual environment $VENV (stack $STACK: Python $("$BASE" -c 'import platform; print(platform.python_version())'), $TORCH, $NUMPY)"
  "$BASE" -m venv "$VENV"
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
  # setuptools < 81: mmcv's setup.py imports pkg_resources
  "${PIP[@]}" 'setuptools<81' wheel ninja "$NUMPY" 'mmengine>=0.10,<0.11'
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
if ! has mmdet==3.3.0 mmsegmentation==1.2.2 pycocotools ftfy regex pytest; then
  echo "[setup] installing mmdet, mmsegmentation, pycocotools and pytest"
  "${PIP[@]}" mmdet==3.3.0 mmsegmentation==1.2.2 pycocotools ftfy regex pytest
fi
if [ "$STACK" = newest ] && ! has flake8==7.5.0 isort==9.0.2 yapf==0.43.0; then
  # the linters of tools/lint.sh (run on this stack), pinned so that every
  # machine formats alike
  echo "[setup] installing the linters"
  "${PIP[@]}" flake8==7.5.0 isort==9.0.2 yapf==0.43.0
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
