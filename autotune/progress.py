"""Live progress of a study (rich) and its closing front table with cost ratios against the baseline."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from typing import Any

from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from autotune.display import fmt
from autotune.objectives import Objective
from autotune.results import Front


class Progress:
    """Counts trials as they end; rich redraws a small panel twice a second from its own thread.

    No Tune callback drives it: passing Tune any callback makes Ray's usage telemetry import the
    MLflow, W&B, Comet and Aim integrations to count callback classes (ray.air._internal.usage,
    even with RAY_USAGE_STATS_ENABLED=0), ~1.3 s of the driver's CPU per study.
    """

    def __init__(self, console: Console, name: str, total: int, already: int, slots: int,
                 quality: Objective, running: Callable[[], int] = lambda: 0) -> None:
        self.console = console
        self.name = name
        self.total = total
        self.already = already
        self.slots = max(1, slots)
        self.quality = quality
        self.counts = {"finished": 0, "stopped": 0, "failed": 0, "diverged": 0}
        self._running = running
        self.front_size = 0
        self.hypervolume = 0.0
        self.best: float | None = None
        self.started = time.time()
        self.durations: list[float] = []
        self._live = Live(console=console, get_renderable=self._render, refresh_per_second=2,
                          transient=False)

    def __enter__(self) -> Progress:
        self._live.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._live.refresh()
        self._live.__exit__(*exc)

    def trial_ended(self, status: str, duration: float | None, front: Front) -> None:
        self.counts[status] = self.counts.get(status, 0) + 1
        if duration:
            self.durations.append(duration)
        self.front_size = len(front.members)
        self.hypervolume = front.hypervolume()
        qualities = [t.metrics[self.quality.metric] for t in front.eligible]
        if qualities:
            self.best = max(qualities) if self.quality.direction == "max" else min(qualities)

    @property
    def done(self) -> int:
        return self.already + sum(self.counts.values())

    def _eta(self) -> str:
        left = self.total - self.done
        if left <= 0:
            return "0s"
        if not self.durations:
            return "…"
        secs = left * (sum(self.durations) / len(self.durations)) / self.slots
        return _duration(secs)

    def _render(self) -> Group:
        c = self.counts
        line = Text.assemble(
            (f"study {self.name}: ", "bold"),
            f"{self.done}/{self.total} trials done · ",
            (f"{self._running()} running", "cyan"), " · ",
            (f"{c['stopped']} stopped early", "yellow"), " · ",
            (f"{c['failed'] + c['diverged']} failed", "red"),
            f" · front {self.front_size} (HV {self.hypervolume:.4g})",
            f" · best {self.quality.metric} {fmt(self.best)}",
            f" · elapsed {_duration(time.time() - self.started)} · ETA {self._eta()}",
        )
        return Group(line)


def _duration(secs: float) -> str:
    secs = int(secs)
    return f"{secs // 60}m{secs % 60:02d}s" if secs >= 60 else f"{secs}s"


def front_table(front: Front, title: str, show_keys: Sequence[str] | None = None) -> Table:
    """The front, baseline first, with each point's knobs that differ from the baseline and its
    cost ratios against the baseline."""
    table = Table(title=title, expand=False)
    table.add_column("trial", justify="right", no_wrap=True)
    for o in front.objectives:
        table.add_column(f"{o.metric}\n({o.direction})", justify="right", no_wrap=True)
    costs = [o for o in front.objectives if o.direction == "min"][: 3]
    for o in costs:
        table.add_column(f"×{o.metric}", justify="right", no_wrap=True)
    table.add_column("policy (knobs that differ from the baseline)", overflow="fold", min_width=30)
    base = front.baseline
    rows = ([base] if base else []) + [t for t in front.members if not base or t.number != base.number]
    for t in rows:
        is_base = base is not None and t.number == base.number
        ratios = [front.ratio(t, o.metric) for o in costs]
        on_front = front.ranks.get(t.number) == 0
        label = f"{t.number}{' (baseline)' if is_base else ''}{' *' if on_front else ''}"
        table.add_row(
            label,
            *(fmt(v) for v in front.values(t)),
            *("—" if r is None else f"{r:.2f}×" for r in ratios),
            "default policy" if is_base else _diff(t.policy, base.policy if base else {}),
            style="bold" if is_base else None,
        )
    table.caption = "* on the Pareto front; × = cost relative to the baseline (lower is cheaper)"
    return table


_SHORT = (("optimizer.", "opt."), ("schedule.", "sched."), ("prune.", "prune."), ("model.", "m."))


def _diff(policy: dict[str, Any], base: dict[str, Any]) -> str:
    """The knobs that differ from the baseline, shortened so a front fits a terminal."""
    parts = []
    for k, v in policy.items():
        if base.get(k) == v or k == "seed":
            continue
        for long, short in _SHORT:
            if k.startswith(long):
                k = short + k[len(long):]
        if isinstance(v, float) and math.isfinite(v):
            v = f"{v:.3g}"
        elif isinstance(v, list):
            v = ",".join(f"{x:g}" if isinstance(x, float) else str(x) for x in v)
        parts.append(f"{k}={v}")
    return " ".join(parts) or "(same as baseline)"
