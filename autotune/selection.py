"""Export selection rules (`knee`, `best:M`, `min:M where M>=V and …`): parsed, never eval'd."""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

from autotune.errors import SelectionError
from autotune.objectives import MEASURED
from autotune.results import Front
from autotune.study import TrialView

Kind = Literal["knee", "best", "min", "max"]
OPS = ("<=", ">=", "==", "<", ">")  # two-character operators first, so "<=" is not read as "<"

# No square brackets: the CLI prints errors through rich, which would read them as markup.
GRAMMAR = ("RULE := knee | KIND:METRIC | KIND:METRIC where COND {and COND}; "
           "KIND := best | min | max; COND := METRIC OP NUMBER; OP := <= | >= | < | > | ==")
_EXAMPLES = ('e.g. --select knee, --select best:accuracy, '
             '--select "min:train_time_s where accuracy>=0.97"')

_METRIC = r"[A-Za-z_][\w.]*"
_NUMBER = r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?"
_HEAD = re.compile(rf"^\s*(best|min|max)\s*:\s*({_METRIC})\s*(?:\bwhere\b(.*))?$", re.I | re.S)
_COND = re.compile(rf"^\s*({_METRIC})\s*(<=|>=|==|<|>)\s*({_NUMBER})\s*$")
_AND = re.compile(r"\s+and\s+", re.I)


@dataclass(frozen=True)
class Condition:
    """`metric op value`; a trial without the metric never satisfies it."""

    metric: str
    op: str
    value: float

    def holds(self, t: TrialView) -> bool:
        v = t.metrics.get(self.metric)
        if v is None or not math.isfinite(v):
            return False
        return {"<=": v <= self.value, ">=": v >= self.value, "<": v < self.value,
                ">": v > self.value, "==": v == self.value}[self.op]

    def distance(self, t: TrialView) -> float:
        """How far `t` is from satisfying the condition (0 if it does): ranks the closest trial."""
        v = t.metrics.get(self.metric)
        if v is None or not math.isfinite(v):
            return math.inf
        return 0.0 if self.holds(t) else abs(v - self.value)

    def __str__(self) -> str:
        return f"{self.metric}{self.op}{self.value:g}"


@dataclass(frozen=True)
class Rule:
    """A parsed selection rule; `text` is what the user wrote, kept for provenance."""

    kind: Kind
    metric: str | None = None
    where: tuple[Condition, ...] = ()
    text: str = ""

    @property
    def metrics(self) -> list[str]:
        return ([self.metric] if self.metric else []) + [c.metric for c in self.where]

    def __str__(self) -> str:
        if self.kind == "knee":
            return "knee"
        cond = f" where {' and '.join(map(str, self.where))}" if self.where else ""
        return f"{self.kind}:{self.metric}{cond}"


def _syntax(text: str, why: str) -> SelectionError:
    return SelectionError(
        f"Selection rule {text!r} is not valid: {why}. The grammar is {GRAMMAR}.",
        fix=f"write a rule in that grammar, {_EXAMPLES}.")


def parse_rule(text: str) -> Rule:
    """Parse RULE (see GRAMMAR) with two regular expressions; nothing is evaluated."""
    stripped = text.strip()
    if stripped.lower() == "knee":
        return Rule("knee", text=stripped)
    m = _HEAD.match(stripped)
    if not m:
        if not stripped:
            raise _syntax(text, "it is empty")
        head = stripped.split(":", 1)[0].split()[0].lower()
        if head not in ("knee", "best", "min", "max"):
            raise _syntax(text, f"it must start with knee, best:, min: or max:, not {head!r}")
        raise _syntax(text, "expected KIND:METRIC, optionally followed by `where CONDITION`")
    kind, metric, tail = m.group(1).lower(), m.group(2), m.group(3)
    where: list[Condition] = []
    if tail is not None:
        if not tail.strip():
            raise _syntax(text, "`where` must be followed by a condition such as accuracy>=0.97")
        for part in _AND.split(tail.strip()):
            c = _COND.match(part)
            if not c:
                raise _syntax(text, f"condition {part.strip()!r} is not METRIC OP NUMBER "
                                    f"(OP one of {', '.join(OPS)})")
            where.append(Condition(c.group(1), c.group(2), float(c.group(3))))
    return Rule(kind, metric, tuple(where), stripped)  # type: ignore[arg-type]


def natural_directions(front: Front, quality: tuple[str, str] | None = None) -> dict[str, str]:
    """Which way is better per metric: measured costs and losses are minimised, then the study's
    objectives and the model's OBJECTIVE (`quality`) override with their own direction."""
    out = {m: "min" for m in MEASURED}
    if quality is not None:
        out[quality[0]] = quality[1]
    out.update({o.metric: o.direction for o in front.objectives})
    return out


def select(rule: Rule, front: Front, directions: Mapping[str, str] | None = None) -> TrialView:
    """The trial `rule` picks among the front's eligible trials (finished, feasible, never stopped
    early); `knee` picks among the front's members."""
    where = (f"study's {len(front.eligible)} eligible trials "
             "(finished, feasible, not stopped early)")
    if not front.eligible:
        raise SelectionError(
            f"Selection rule {rule.text or str(rule)!r} has nothing to choose from: the study "
            "has no finished, feasible trial (stopped, failed and infeasible trials cannot be "
            "exported).",
            fix="run more trials (autotune search … --trials N with a larger N), or relax the "
                "study's constraints.")
    if rule.kind == "knee":
        knee = front.knee()
        assert knee is not None  # eligible trials always leave a non-empty first front
        return knee
    known = metric_names(front.eligible)
    for m in rule.metrics:
        if m not in known:
            raise SelectionError(
                f"Selection rule {rule.text or str(rule)!r} names metric {m!r}, which no trial of "
                f"the study has. The trials have: {', '.join(known)}.",
                fix="use one of those metric names.")
    directions = directions if directions is not None else natural_directions(front)
    candidates: list[TrialView] = list(front.eligible)
    for i, cond in enumerate(rule.where):
        ok = [t for t in candidates if cond.holds(t)]
        if not ok:
            raise _unsatisfied(rule, cond, rule.where[:i], candidates, where)
        candidates = ok
    metric = rule.metric
    assert metric is not None
    if rule.kind == "best":
        direction = directions.get(metric)
        if direction not in ("min", "max"):
            raise SelectionError(
                f"Selection rule {rule.text!r}: autotune does not know whether {metric!r} is "
                "better high or low (it is neither an objective of the study, a cost, nor the "
                "model's OBJECTIVE).",
                fix=f"say which: --select max:{metric} or --select min:{metric}.")
    else:
        direction = rule.kind
    have = [t for t in candidates if math.isfinite(t.metrics.get(metric, math.nan))]
    if not have:
        raise SelectionError(
            f"Selection rule {rule.text!r}: none of the trials it admits reports {metric!r}.",
            fix="select by a metric every trial reports.")
    sign = 1.0 if direction == "min" else -1.0
    # Ties: the front member first (it is at least as good elsewhere), then the earlier trial.
    return min(have, key=lambda t: (sign * t.metrics[metric], front.ranks.get(t.number, 1) != 0,
                                    t.number))


def is_metric(name: str) -> bool:
    """Ray flattens each trial's config into its result as `config/…`; those are not metrics."""
    return not name.startswith("config/")


def metric_names(trials: Sequence[TrialView]) -> list[str]:
    return sorted({k for t in trials for k in t.metrics if is_metric(k)})


def _unsatisfied(rule: Rule, cond: Condition, before: Sequence[Condition],
                 pool: Sequence[TrialView], where: str) -> SelectionError:
    closest = min(pool, key=lambda t: (cond.distance(t), t.number))
    value = closest.metrics.get(cond.metric)
    shown = "missing" if value is None else f"{value:.6g}"
    among = (f" among the trials with {' and '.join(map(str, before))}" if before
             else f" among the {where}")
    return SelectionError(
        f"Selection rule {rule.text or str(rule)!r} matches nothing: no trial has "
        f"{cond}{among}; the closest is trial {closest.number} with "
        f"{cond.metric}={shown}.",
        fix=f"relax the bound (the closest trial would pass {cond.metric}{cond.op}"
            f"{'…' if value is None else f'{value:.12g}'}), or run more trials.")
