#!/usr/bin/env bash
# Creates .venv and installs autotune with torch pinned to the local 2.13.0 CPU wheel (never a CUDA build).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null || PY=python3
stamp=.venv/.autotune-installed
want=$(cat pyproject.toml scripts/setup.sh | sha256sum | cut -c1-16)
if [ -x .venv/bin/python ] && [ "$(cat "$stamp" 2>/dev/null)" = "$want" ]; then
  exit 0  # already installed from this pyproject
fi
[ -x .venv/bin/python ] || "$PY" -m venv .venv
log=$(mktemp)
pipi() {
  # This machine's pip config names local wheel folders that may be absent; hide only those warnings.
  if ! .venv/bin/python -m pip install -q "$@" >"$log" 2>&1; then
    grep -v "is ignored: it is neither" "$log" >&2; exit 1
  fi
}
pipi --upgrade pip
# torch first and pinned: a later unpinned resolver would otherwise pull gigabytes of CUDA wheels.
pipi "torch==2.13.0"
pipi -e ".[dev]" "torch==2.13.0"
rm -f "$log"
echo "$want" > "$stamp"
echo "autotune installed in .venv ($(.venv/bin/python -c 'import torch; print("torch", torch.__version__)'))"
