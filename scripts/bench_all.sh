#!/usr/bin/env bash
# Run every benchmark and regenerate docs/BENCHMARKS.md (+ docs/img/*.png). ≤ 30 min on 2 cores.
# The tables under scripts/tables/ are shipped; rebuild them (≈ 10 min more) with REBUILD_TABLES=1.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
OUT=${BENCH_OUT:-bench_out}
mkdir -p "$OUT"
.venv/bin/pip install -q 'syne-tune==0.16.0'   # the `bench` extra: Syne Tune's MOASHA is a peer
if [[ "${REBUILD_TABLES:-0}" == 1 ]]; then
  rm -f scripts/tables/digits.json.gz scripts/tables/charlm.json.gz
  $PY scripts/make_table.py digits
  $PY scripts/make_table.py charlm
fi
if [[ -f scripts/bench_trainer.py ]]; then
  $PY scripts/bench_trainer.py --threads 2 --rounds 7 --epochs 4 --seconds 1.0 --write docs/BENCHMARKS.md
fi
$PY scripts/bench_overhead.py --trials 200 --rounds 8 --json "$OUT/overhead.json"
$PY scripts/bench_search.py --seeds 10 --ray-seeds 2 --json "$OUT/search.json"
$PY scripts/bench_efficiency.py --json "$OUT/efficiency.json"
$PY scripts/bench_report.py --dir "$OUT"
