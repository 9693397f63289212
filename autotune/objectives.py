"""Objectives (`metric:min|max`) and constraints (`metric<=value`): parsed, never eval'd, checked as measured."""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Literal

from autotune.costs import COST_METRICS
from autotune.errors import StudyError

Direction = Literal["min", "max"]
_CONSTRAINT = re.compile(r"^\s*([A-Za-z_][\w.]*)\s*(<=|>=|<|>)\s*([-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?)\s*$")
# Metrics whose direction needs no saying.
_DEFAULT_DIRECTION: dict[str, Direction] = {m: "min" for m in (*COST_METRICS, "infer_flops")}
# Measured on every managed run besides the model's own metrics.
MEASURED = (*COST_METRICS, "infer_flops", "val_loss", "train_loss")


@dataclass(frozen=True)
class Objective:
    metric: str
    direction: Direction

    def __str__(self) -> str:
        return f"{self.metric}:{self.direction}"


@dataclass(frozen=True)
class Constraint:
    """`metric op bound`; Optuna's convention: the stored value is feasible when ≤ 0."""

    metric: str
    op: str
    bound: float

    def violation(self, value: float) -> float:
        return value - self.bound if self.op in ("<=", "<") else self.bound - value

    def __str__(self) -> str:
        return f"{self.metric}{self.op}{self.bound:g}"


def parse_objective(text: str) -> Objective:
    metric, sep, direction = text.strip().partition(":")
    metric = metric.strip()
    if not metric or not re.fullmatch(r"[A-Za-z_][\w.]*", metric):
        raise StudyError(f"--objective {text!r}: {metric!r} is not a metric name.",
                         fix="write METRIC:max or METRIC:min, e.g. --objective accuracy:max")
    if not sep:
        if metric not in _DEFAULT_DIRECTION:
            raise StudyError(f"--objective {text!r} gives no direction.",
                             fix=f"write {metric}:max or {metric}:min")
        return Objective(metric, _DEFAULT_DIRECTION[metric])
    direction = direction.strip().lower()
    if direction not in ("min", "max"):
        raise StudyError(f"--objective {text!r}: direction must be 'min' or 'max', got {direction!r}.",
                         fix=f"write {metric}:max or {metric}:min")
    return Objective(metric, direction)  # type: ignore[arg-type]


def parse_constraint(text: str) -> Constraint:
    m = _CONSTRAINT.match(text)
    if not m:
        raise StudyError(
            f"--constraint {text!r} is not of the form METRIC<=VALUE or METRIC>=VALUE.",
            fix='write e.g. --constraint "infer_latency_ms<=5" (quote it for the shell).',
        )
    op = {"<": "<=", ">": ">="}.get(m.group(2), m.group(2))
    return Constraint(m.group(1), op, float(m.group(3)))


def check_measured(metrics: Iterable[str], available: Sequence[str], what: str, custom_loop: bool,
                   energy_available: bool) -> None:
    """Refuse, before the study starts, an objective or constraint on a metric no trial will report."""
    for metric in metrics:
        if metric == "energy_j" and not energy_available:
            raise StudyError(
                f"{what} 'energy_j' cannot be measured here: no NVML (GPU) or readable RAPL "
                "(/sys/class/powercap) energy counter.",
                fix="drop it, or run on a GPU node / a host where RAPL is readable.",
            )
        if custom_loop or metric in available:
            continue
        raise StudyError(
            f"{what} {metric!r} is not measured: trials report {sorted(set(available))}.",
            fix="use one of those names, or return it from metrics() in model.py.",
        )
