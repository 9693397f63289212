"""Build a tabulated benchmark: train every policy of a choice-only space once for its full budget.

    .venv/bin/python scripts/make_table.py digits      # -> scripts/tables/digits.json.gz
    .venv/bin/python scripts/make_table.py charlm      # -> scripts/tables/charlm.json.gz

Each row holds the policy's key (its searched values), and per epoch the quality and the cumulative
costs that grow with training (train_time_s, train_flops); the last epoch holds the deployed model's
quality and every final cost. Runs --workers processes of one torch thread each; finished rows are
kept in <table>.partial.jsonl so an interrupted build resumes.
"""

from __future__ import annotations

import argparse
import datetime
import gzip
import json
import multiprocessing as mp
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchlib import ROOT, TABLES, command, grid, machine, policy_key, versions  # noqa: E402

STUDIES = {
    "digits": dict(model=ROOT / "studies/digits/model.py", space=TABLES / "digits_space.yaml",
                   objectives=[["accuracy", "max"], ["train_time_s", "min"]], defaults={"model.width": 16}),
    "charlm": dict(model=TABLES / "charlm_small/model.py", space=TABLES / "charlm_space.yaml",
                   objectives=[["perplexity", "min"], ["train_time_s", "min"]], defaults={}),
}
_KEEP = ("epoch", "train_time_s", "train_flops", "train_loss")


def _work(args: tuple[str, str, dict]) -> dict:
    model, key, overrides = args
    from autotune.contract import load_model_file
    from autotune.runs import default_policy
    from autotune.trainer import train

    mf = load_model_file(model)
    policy = default_policy(mf).with_overrides(overrides, source="table grid")
    t0 = time.time()
    try:
        res = train(mf, policy, threads=1)
    except Exception as exc:  # noqa: BLE001 - a policy that cannot run is a row too
        return {"key": key, "status": "failed", "error": f"{type(exc).__name__}: {exc}"[:300],
                "epochs": []}
    q = mf.quality_metric
    rows = []
    for h in res.history:
        row = {k: float(h[k]) for k in (*_KEEP, q) if k in h}
        rows.append(row)
    if res.status == "finished":
        rows[-1] = {**rows[-1], **{k: float(v) for k, v in res.metrics.items()
                                   if isinstance(v, int | float)}}
    return {"key": key, "status": res.status, "epochs": rows, "wall_s": time.time() - t0}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("study", choices=sorted(STUDIES))
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--limit", type=int, default=None, help="only the first N policies (testing)")
    ap.add_argument("--out", type=Path, default=None)
    a = ap.parse_args()
    from autotune.contract import load_model_file
    from autotune.runs import default_policy
    from autotune.space import SearchSpace

    cfg = STUDIES[a.study]
    mf = load_model_file(cfg["model"])
    base = default_policy(mf)
    space = SearchSpace.load(cfg["space"])
    points = grid(space)[: a.limit]
    keys = [policy_key(space, {**base.flat(), **p}) for p in points]
    out = a.out or TABLES / f"{a.study}.json.gz"
    partial = out.with_suffix(".partial.jsonl")
    done = {}
    if partial.exists():
        for line in partial.read_text().splitlines():
            r = json.loads(line)
            done[r["key"]] = r
    todo = [(str(cfg["model"]), k, p) for k, p in zip(keys, points, strict=True) if k not in done]
    print(f"{a.study}: {len(points)} policies, {len(done)} done, {len(todo)} to train", flush=True)
    t0 = time.time()
    with mp.get_context("spawn").Pool(a.workers) as pool, open(partial, "a") as f:
        for i, r in enumerate(pool.imap_unordered(_work, todo), 1):
            done[r["key"]] = r
            f.write(json.dumps(r) + "\n")
            f.flush()
            if i % 10 == 0 or i == len(todo):
                print(f"  {i}/{len(todo)} in {time.time() - t0:.0f}s", flush=True)
    table = {
        "name": a.study, "model_file": str(Path(cfg["model"]).relative_to(ROOT)),
        "space_file": str(Path(cfg["space"]).relative_to(ROOT)), "epochs": base.epochs,
        "objectives": cfg["objectives"], "quality": mf.quality_metric,
        "default_key": policy_key(space, base.flat(), cfg["defaults"]),
        "generated": {"command": command(), "date": datetime.date.today().isoformat(),
                      "seconds": round(time.time() - t0), "machine": machine(),
                      "versions": versions(), "torch_threads": 1, "workers": a.workers},
        "rows": [done[k] for k in keys],
    }
    with gzip.open(out, "wt", encoding="utf-8") as f:
        json.dump(table, f, separators=(",", ":"))
    meta = {k: table[k] for k in ("name", "model_file", "space_file", "epochs", "objectives",
                                  "quality", "default_key")}
    (out.parent / f"{a.study}.meta.json").write_text(json.dumps(meta, indent=1) + "\n")
    partial.unlink()
    print(f"wrote {out} ({out.stat().st_size / 1e3:.0f} kB)")


if __name__ == "__main__":
    main()
