#!/usr/bin/env bash
# The linters OpenMMLab projects run (flake8, isort, yapf; settings in
# setup.cfg), over the whole tree; exits non-zero on the first finding.
#   bash tools/lint.sh [PYTHON]    (default: .venv/bin/python)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${1:-.venv/bin/python}
PATHS=(mmcmt tools tests configs setup.py)
"$PY" -m flake8 "${PATHS[@]}"
"$PY" -m isort --check-only --diff "${PATHS[@]}"
"$PY" -m yapf --diff --recursive "${PATHS[@]}"
echo "[lint] flake8, isort and yapf: clean"
