#!/usr/bin/env bash
# Creates .venv and installs autotune with torch pinned to the local 2.13.0 CPU wheel (never a CUDA build).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null || PY=python3
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip 2>&1 | grep -v "is ignored" || true
# torch first and pinned: a later unpinned resolver would otherwise pull gigabytes of CUDA wheels.
.venv/bin/python -m pip install -q "torch==2.13.0"
.venv/bin/python -m pip install -q -e ".[dev]" "torch==2.13.0"
echo "autotune installed in .venv ($(.venv/bin/python -c 'import torch; print("torch", torch.__version__)'))"
