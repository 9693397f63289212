"""Shared helpers of the benchmark scripts: tabulated benchmarks (load, key, true front), hypervolume."""

from __future__ import annotations

import gzip
import json
import math
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
TABLES = Path(__file__).resolve().parent / "tables"


def grid(space: Any) -> list[dict[str, Any]]:
    """Every point of a choice-only SearchSpace, honouring `when:` conditions (in the space's order)."""
    out: list[dict[str, Any]] = []

    def walk(i: int, sampled: dict[str, Any]) -> None:
        if i == len(space.params):
            out.append(dict(sampled))
            return
        p = space.params[i]
        if not p.active(sampled):
            walk(i + 1, sampled)
            return
        if p.kind not in ("choice", "fixed"):
            raise ValueError(f"{p.key}: a table needs a choice-only space, got {p.kind}")
        for c in p.choices:
            sampled[p.key] = c
            walk(i + 1, sampled)
            del sampled[p.key]

    walk(0, {})
    return out


def policy_key(space: Any, flat: dict[str, Any], defaults: dict[str, Any] | None = None) -> str:
    """The table key of a policy: the values of the space's active searched keys, canonical JSON
    (`defaults` fills model.* keys the policy leaves to build_model's own defaults)."""
    sampled: dict[str, Any] = {}
    for p in space.params:
        if p.kind != "fixed" and p.active(sampled):
            v = flat[p.key] if p.key in flat else (defaults or {})[p.key]
            sampled[p.key] = list(v) if isinstance(v, tuple) else v
    return json.dumps({k: _canon(v) for k, v in sorted(sampled.items())}, sort_keys=True)


def _canon(v: Any) -> Any:
    if isinstance(v, float) and v.is_integer():
        return int(v)
    if isinstance(v, float):
        return float(f"{v:.10g}")
    return v


def load_table(path: str | Path) -> dict[str, Any]:
    with gzip.open(path, "rt", encoding="utf-8") as f:
        table = json.load(f)
    table["index"] = {r["key"]: r for r in table["rows"]}
    return table


def final_vector(row: dict[str, Any], objectives: list[list[str]]) -> tuple[float, ...] | None:
    """The row's objective values after the full budget, None if it diverged."""
    if row["status"] != "finished":
        return None
    last = row["epochs"][-1]
    return tuple(float(last[m]) for m, _ in objectives)


def to_loss(values: np.ndarray, objectives: list[list[str]]) -> np.ndarray:
    arr = np.array(values, dtype=float).reshape(-1, len(objectives))
    for j, (_, d) in enumerate(objectives):
        if d == "max":
            arr[:, j] = -arr[:, j]
    return arr


class HV:
    """Hypervolume on a table: objectives normalised by the true front's ideal and nadir, reference
    point 1.1 (the nadir plus 10 % of the front's range), both fixed per table."""

    def __init__(self, table: dict[str, Any]) -> None:
        import moocore

        self.objs = table["objectives"]
        pts = [v for r in table["rows"] if (v := final_vector(r, self.objs)) is not None]
        loss = to_loss(np.array(pts), self.objs)
        front = loss[moocore.is_nondominated(loss)]
        self.lo, hi = front.min(axis=0), front.max(axis=0)
        self.span = np.maximum(hi - self.lo, 1e-12)
        self.ref = np.full(loss.shape[1], 1.1)
        self.true = self.of(pts)
        self.front_size = len(front)

    def norm(self, values: Any) -> np.ndarray:
        return (to_loss(np.array(values, dtype=float), self.objs) - self.lo) / self.span

    def of(self, values: Any) -> float:
        import moocore

        if len(values) == 0:
            return 0.0
        pts = self.norm(values)
        pts = pts[np.isfinite(pts).all(axis=1)]
        pts = pts[(pts < self.ref).all(axis=1)]
        return float(moocore.hypervolume(pts, ref=self.ref)) if len(pts) else 0.0


def machine() -> dict[str, str]:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
        model = next((ln.split(":", 1)[1].strip() for ln in out.splitlines()
                      if ln.startswith("Model name")), platform.processor())
    except Exception:  # noqa: BLE001
        model = platform.processor()
    import os

    return {"cpu": model, "nproc": str(os.cpu_count()), "python": platform.python_version(),
            "platform": platform.platform()}


def versions(names: tuple[str, ...] = ("torch", "ray", "optuna", "mlflow", "syne-tune", "numpy",
                                       "moocore")) -> dict[str, str]:
    from autotune.recording import package_versions

    return {k: v for k, v in package_versions(names).items() if k != "python"}


def command() -> str:
    return " ".join([".venv/bin/python", *[a if not a.startswith(str(ROOT)) else
                                          str(Path(a).relative_to(ROOT)) for a in sys.argv]])


def fmt(x: float, digits: int = 3) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}g}"


class Replay:
    """What a replay model.py exposes: a custom `train(policy, report)` that looks the policy up in a
    table and reports its per-epoch rows (no training)."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.path = TABLES / f"{name}.json.gz"
        self._table: dict[str, Any] | None = None
        meta = json.loads((TABLES / f"{name}.meta.json").read_text())
        self.objective = tuple(meta["objectives"][0])
        self.epochs = meta["epochs"]
        self.default_policy = {**json.loads(meta["default_key"]), "epochs": meta["epochs"]}
        self.space_file = ROOT / meta["space_file"]
        self._space: Any = None

    @property
    def table(self) -> dict[str, Any]:
        if self._table is None:
            self._table = load_table(self.path)
        return self._table

    def key(self, flat: dict[str, Any]) -> str:
        if self._space is None:
            from autotune.space import SearchSpace

            self._space = SearchSpace.load(self.space_file)
        return policy_key(self._space, flat)

    def train(self, policy: Any, report: Any) -> None:
        row = self.table["index"][self.key(policy.flat())]
        q = self.table["quality"]
        for r in row["epochs"]:
            report(**{k: v for k, v in r.items() if isinstance(v, int | float)})
        if row["status"] != "finished":
            n = len(row["epochs"]) + 1
            report(epoch=n, **{q: float("nan")}, train_time_s=float("nan"), diverged=1.0)
