"""What a study found: its eligible trials, Pareto front, hypervolume and cost ratios against the baseline."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from autotune import pareto
from autotune.objectives import Objective
from autotune.study import TrialView


@dataclass
class Front:
    """The study's Pareto front over finished, feasible trials (stopped trials never enter it)."""

    objectives: list[Objective]
    eligible: list[TrialView]
    ranks: dict[int, int]  # trial number → non-dominated rank among eligible trials
    baseline: TrialView | None

    @property
    def members(self) -> list[TrialView]:
        return sorted((t for t in self.eligible if self.ranks[t.number] == 0),
                      key=lambda t: self.values(t)[0])

    def values(self, t: TrialView) -> tuple[float, ...]:
        return tuple(t.metrics.get(o.metric, math.nan) for o in self.objectives)

    def loss(self, trials: Sequence[TrialView]) -> np.ndarray:
        values = np.array([self.values(t) for t in trials], dtype=float).reshape(
            len(trials), len(self.objectives))
        return pareto.to_loss(values, [o.direction for o in self.objectives])

    def reference(self) -> np.ndarray | None:
        """Hypervolume reference: nadir of every eligible trial plus 10 % of the range, fixed per call."""
        loss = self.loss(self.eligible)
        finite = loss[np.isfinite(loss).all(axis=1)]
        return pareto.reference_point(finite) if len(finite) else None

    def hypervolume(self, ref: np.ndarray | None = None) -> float:
        ref = self.reference() if ref is None else ref
        if ref is None:
            return 0.0
        return pareto.hypervolume(self.loss(self.members), ref)

    def hypervolume_history(self) -> list[tuple[int, float]]:
        """(finished trials so far, hypervolume) after each finished trial, against today's reference."""
        ref = self.reference()
        if ref is None:
            return []
        ordered = sorted(self.eligible, key=lambda t: (t.ended or 0, t.number))
        loss = self.loss(ordered)
        return [(i + 1, pareto.hypervolume(loss[: i + 1], ref)) for i in range(len(ordered))]

    def knee(self) -> TrialView | None:
        members = self.members
        if not members:
            return None
        return members[pareto.knee_index(self.loss(members))]

    def ratio(self, t: TrialView, metric: str) -> float | None:
        """t's metric / the baseline's: the cost ratio that says what tuning bought."""
        if self.baseline is None:
            return None
        base, mine = self.baseline.metrics.get(metric), t.metrics.get(metric)
        if base is None or mine is None or base == 0 or not math.isfinite(base):
            return None
        return mine / base


def compute_front(views: Sequence[TrialView], objectives: Sequence[Objective]) -> Front:
    objectives = list(objectives)
    eligible = [t for t in views if t.status == "finished" and t.feasible
                and all(math.isfinite(t.metrics.get(o.metric, math.nan)) for o in objectives)]
    baseline = next((t for t in views if t.baseline and t.status == "finished"), None)
    front = Front(objectives, eligible, {}, baseline)
    if eligible:
        ranks = pareto.nondominated_ranks(front.loss(eligible))
        front.ranks = {t.number: int(r) for t, r in zip(eligible, ranks, strict=True)}
    return front


def best_within(front: Front, quality: Objective, tolerance: float, cost: str,
                relative: bool = False) -> TrialView | None:
    """The eligible trial with the lowest `cost` whose quality is within `tolerance` of the baseline's
    (absolute, e.g. 0.005 = 0.5 pp of accuracy; or relative, e.g. 0.01 = 1 % of perplexity)."""
    if front.baseline is None:
        return None
    base_q = front.baseline.metrics[quality.metric]
    slack = abs(base_q) * tolerance if relative else tolerance
    ok = [t for t in front.eligible
          if (t.metrics[quality.metric] >= base_q - slack if quality.direction == "max"
              else t.metrics[quality.metric] <= base_q + slack) and cost in t.metrics]
    return min(ok, key=lambda t: t.metrics[cost], default=None)
