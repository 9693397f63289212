"""Multi-objective early stopping: rung schedule, pure promotion rule, Ray Tune scheduler."""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
from ray.tune.experiment import Trial
from ray.tune.schedulers import FIFOScheduler, TrialScheduler

from autotune import pareto
from autotune.errors import StudyError
from autotune.pareto import Objective

if TYPE_CHECKING:
    from ray.tune.execution.tune_controller import TuneController

Decision = Literal["continue", "stop"]

_STATE_VERSION = 1
_RUNGS_FIX = (
    'Write the rungs as ascending epochs ("3,9,27") or as "grace=3,eta=3"; '
    '"eta=N" may follow either.'
)


@dataclass(frozen=True)
class RungSchedule:
    """Epochs at which trials are compared (ascending, each < max_epochs) and the promotion ratio.

    Epochs count from 1: rung 3 is decided on the result reported after the third epoch.
    """

    rungs: tuple[int, ...]
    max_epochs: int
    eta: int = 3

    def __post_init__(self) -> None:
        problems = []
        if not isinstance(self.max_epochs, int) or self.max_epochs < 1:
            problems.append(f"max_epochs must be an integer >= 1, but got {self.max_epochs!r}")
        if not isinstance(self.eta, int) or self.eta < 2:
            problems.append(f"eta must be an integer >= 2, but got {self.eta!r}")
        rungs = tuple(self.rungs)
        if not all(isinstance(r, int) and r >= 1 for r in rungs):
            problems.append(f"rungs must be integers >= 1, but got {rungs!r}")
        elif any(b <= a for a, b in zip(rungs, rungs[1:], strict=False)):
            problems.append(f"rungs must be strictly ascending, but got {rungs!r}")
        elif isinstance(self.max_epochs, int) and rungs and rungs[-1] >= self.max_epochs:
            problems.append(
                f"every rung must be < max_epochs={self.max_epochs}, but got {rungs!r}"
            )
        if problems:
            raise StudyError("Invalid rung schedule: " + "; ".join(problems) + ".", fix=_RUNGS_FIX)
        object.__setattr__(self, "rungs", rungs)

    @classmethod
    def geometric(cls, grace: int, eta: int, max_epochs: int) -> RungSchedule:
        """Rungs grace * eta**k (k = 0, 1, ...) below max_epochs; none if grace >= max_epochs."""
        if not isinstance(grace, int) or grace < 1:
            raise StudyError(f"grace must be an integer >= 1, but got {grace=!r}.", fix=_RUNGS_FIX)
        if not isinstance(eta, int) or eta < 2:
            raise StudyError(f"eta must be an integer >= 2, but got {eta=!r}.", fix=_RUNGS_FIX)
        rungs = []
        r = grace
        while r < max_epochs:
            rungs.append(r)
            r *= eta
        return cls(rungs=tuple(rungs), max_epochs=max_epochs, eta=eta)

    @classmethod
    def default(cls, eta: int, max_epochs: int) -> RungSchedule:
        """The schedule `autotune search` uses when no --rungs is given: geometric from
        grace = max(1, max_epochs // eta**2), e.g. 1/3/9 for 10 epochs, 1/3 for 8, 3/9/27 for 30.

        The first rung at ~1/eta² of the budget (it was a fixed 3) made the difference on the
        tabulated benchmarks (docs/BENCHMARKS.md, "Search efficiency"): a dominated policy costs
        one epoch instead of three, and the sampler hears about it sooner.
        """
        return cls.geometric(max(1, max_epochs // eta**2), eta, max_epochs)

    @classmethod
    def parse(cls, text: str, max_epochs: int) -> RungSchedule:
        """Parse "3,9,27" (eta 3), "3,9,27,eta=2" or "grace=3,eta=3"; drops rungs >= max_epochs."""
        rungs: list[int] = []
        keys: dict[str, int] = {}
        problems = []
        tokens = [t.strip() for t in str(text).split(",")]
        if not any(tokens):
            raise StudyError(f"Rung schedule is empty: {text!r}.", fix=_RUNGS_FIX)
        for tok in tokens:
            name, sep, value = tok.partition("=")
            name, value = name.strip(), value.strip()
            if sep and name not in ("grace", "eta"):
                problems.append(f"unknown key {name!r} (must be one of ['eta', 'grace'])")
            elif sep and name in keys:
                problems.append(f"{name!r} given twice")
            elif not (value if sep else name).isdigit():
                problems.append(
                    f"{tok!r} is not a positive integer" + (" setting" if sep else " epoch")
                )
            elif sep:
                keys[name] = int(value)
            else:
                rungs.append(int(name))
        if rungs and "grace" in keys:
            problems.append("give either explicit rungs or grace=, not both")
        if not rungs and "grace" not in keys and not problems:
            problems.append("no rungs and no grace= given")
        if problems:
            raise StudyError(
                f"Cannot parse rung schedule {text!r}: " + "; ".join(problems) + ".",
                fix=_RUNGS_FIX,
            )
        eta = keys.get("eta", 3)
        if "grace" in keys:
            return cls.geometric(keys["grace"], eta, max_epochs)
        return cls(rungs=tuple(r for r in rungs if r < max_epochs), max_epochs=max_epochs, eta=eta)


class MultiObjectiveRungs:
    """Asynchronous successive halving whose promotion rule is non-dominated sorting (no Ray here).

    At a rung, a trial's objective vector is recorded once; it continues iff its position in
    `pareto.front_order` of everything recorded at that rung (itself included) is < `quota(n)`,
    or, with `promote_front` (default True), it is non-dominated (rank 0) among them: only trials
    that train the whole budget enter the study's front, and with the quota alone too few did.
    The quota is ceil(n / eta), and ceil(n * mature_factor / eta) once `set_progress` reports that
    at least `mature_at` of the study's budget is spent (defaults 0.5 and 2; None: never): late in
    a study, budget shifts to full-length trials. Like ASHA the decision is made on arrival,
    against whoever reached the rung before: the first trial always continues, later ones compete
    with a growing field.
    """

    def __init__(
        self,
        objectives: Sequence[Objective],
        schedule: RungSchedule,
        *,
        promote_front: bool = True,
        mature_at: float | None = 0.5,
        mature_factor: float = 2.0,
    ) -> None:
        objs = [tuple(o) for o in objectives]
        problems = []
        if not objs:
            problems.append("no objectives given")
        for o in objs:
            if len(o) != 2 or o[1] not in ("min", "max"):
                problems.append(f"{o!r} must be (metric, 'min' | 'max')")
        names = [o[0] for o in objs]
        if len(set(names)) != len(names):
            problems.append(f"metric names repeat: {names}")
        if problems:
            raise StudyError(
                "Invalid scheduler objectives: " + "; ".join(problems) + ".",
                fix="Give each objective once as (metric, 'min') or (metric, 'max').",
            )
        if mature_at is not None and not 0.0 <= mature_at <= 1.0:
            problems.append(f"mature_at must be in [0, 1] or None, but got {mature_at!r}")
        if not mature_factor >= 1.0:
            problems.append(f"mature_factor must be >= 1, but got {mature_factor!r}")
        if problems:
            raise StudyError(
                "Invalid scheduler settings: " + "; ".join(problems) + ".",
                fix="Use mature_at in [0, 1] (or None: never) and mature_factor >= 1.",
            )
        self.objectives: list[Objective] = [(str(n), d) for n, d in objs]  # type: ignore[misc]
        self.schedule = schedule
        self.promote_front = bool(promote_front)
        self.mature_at = mature_at
        self.mature_factor = float(mature_factor)
        self.progress = 0.0
        self._rungs: dict[int, dict[str, tuple[float, ...]]] = {r: {} for r in schedule.rungs}
        self.stopped: dict[str, int] = {}
        # Bumped on every recorded vector or stop: the Ray adapter persists only when state moved.
        self.changes = 0

    @property
    def metric_names(self) -> list[str]:
        return [n for n, _ in self.objectives]

    def on_result(self, trial_id: str, epoch: int, metrics: Mapping[str, float]) -> Decision:
        """Decide after a trial reports `metrics` at `epoch` (1-based)."""
        if trial_id in self.stopped:
            return "stop"
        missing = [n for n in self.metric_names if n not in metrics]
        if missing:
            raise StudyError(
                f"Trial {trial_id} reported no {missing} at epoch {epoch}; got {sorted(metrics)}.",
                fix="Report every objective on every epoch.",
            )
        vector = tuple(float(metrics[n]) for n in self.metric_names)
        if not all(math.isfinite(v) for v in vector):
            # Diverged: stop now, and keep it off the rung so it does not widen ceil(n / eta).
            return self._stop(trial_id, epoch)
        # The highest rung reached: equal to `epoch` when every epoch is reported; if a report was
        # skipped (or a restored trial resumes past a rung), lower rungs are not back-filled, as in
        # Ray's ASHA.
        reached = [r for r in self.schedule.rungs if r <= epoch]
        if not reached:
            return "continue"
        rung = reached[-1]
        table = self._rungs[rung]
        if trial_id in table:
            return "continue"  # judged at this rung before and not stopped, so it was promoted
        table[trial_id] = vector
        self.changes += 1
        ids = list(table)
        loss = pareto.to_loss(np.array([table[i] for i in ids]), [d for _, d in self.objectives])
        me = ids.index(trial_id)
        position = int(np.flatnonzero(pareto.front_order(loss) == me)[0])
        if position < self.quota(len(ids)):
            return "continue"
        if self.promote_front and pareto.nondominated_ranks(loss)[me] == 0:
            return "continue"  # on the rung's front: stopping it would thin the study's front
        return self._stop(trial_id, epoch)

    def quota(self, n: int) -> int:
        """How many of the n trials recorded at a rung continue by position (front_order).

        ceil(n / eta), or ceil(n * mature_factor / eta) (at most n) once the study is mature,
        i.e. `set_progress` reported a fraction >= mature_at.
        """
        factor = self.mature_factor if self.mature else 1.0
        return min(n, math.ceil(n * factor / self.schedule.eta))

    @property
    def mature(self) -> bool:
        return self.mature_at is not None and self.progress >= self.mature_at

    def set_progress(self, fraction: float) -> None:
        """Tell the scheduler how much of the study's budget is spent (0..1, clipped).

        The runner calls it as trials end (trials done / trials asked for, or the time budget's
        share if larger). Past `mature_at` the quota grows by `mature_factor`: late in a study
        the sampler knows where to look and a full-budget trial is worth more than two
        short ones, because only full-budget trials enter the front.
        """
        f = float(fraction)
        self.progress = min(1.0, max(0.0, f)) if math.isfinite(f) else self.progress

    def _stop(self, trial_id: str, epoch: int) -> Decision:
        self.stopped[trial_id] = epoch
        self.changes += 1
        return "stop"

    def rung_table(self) -> dict[int, dict[str, tuple[float, ...]]]:
        """Copy of rung -> {trial_id: objective vector, in `objectives` order, raw (not loss)}."""
        return {r: dict(t) for r, t in self._rungs.items()}

    def state(self) -> dict[str, Any]:
        """JSON-serialisable snapshot (recorded vectors are always finite: strict JSON holds)."""
        s = self.schedule
        return {
            "version": _STATE_VERSION,
            "objectives": [list(o) for o in self.objectives],
            "schedule": {"rungs": list(s.rungs), "max_epochs": s.max_epochs, "eta": s.eta},
            "rungs": {
                str(r): {t: list(v) for t, v in table.items()} for r, table in self._rungs.items()
            },
            "stopped": dict(self.stopped),
        }

    @classmethod
    def from_state(cls, state: Mapping[str, Any], **options: Any) -> MultiObjectiveRungs:
        """Rebuild from `state()`, e.g. when a study resumes; `options` are the constructor's
        keyword settings (promote_front, mature_at, mature_factor), which the state does not hold:
        they, like the progress, come from the running study."""
        if state.get("version") != _STATE_VERSION:
            raise StudyError(
                f"Scheduler state has version {state.get('version')!r}; "
                f"this autotune reads {_STATE_VERSION}.",
                fix="Resume with the autotune version that made the study, or start a new study.",
            )
        sch = state["schedule"]
        obj = cls(
            [(n, d) for n, d in state["objectives"]],
            RungSchedule(rungs=tuple(sch["rungs"]), max_epochs=sch["max_epochs"], eta=sch["eta"]),
            **options,
        )
        for r, table in state["rungs"].items():
            if int(r) not in obj._rungs:
                raise StudyError(
                    f"Scheduler state has a rung {r} not in the schedule {sch['rungs']}."
                )
            obj._rungs[int(r)] = {t: tuple(float(x) for x in v) for t, v in table.items()}
        obj.stopped = {str(t): int(e) for t, e in state["stopped"].items()}
        return obj


class MultiObjectiveASHA(FIFOScheduler):
    """Ray Tune adapter around `MultiObjectiveRungs`; runs trials FIFO and stops them at rungs.

    It keeps metric/mode None: the objectives are its own. If `state_path` is given, the rung data
    is loaded from it when present and rewritten (atomically) when it changes, at most once every
    `save_every_s` and by `flush()` (the driver's, after the study), because Ray Tune 2.60 never
    calls a scheduler's save/restore and `Tuner.restore` brings back the scheduler as it was
    pickled when `fit()` began, i.e. empty. A kill loses at most the last second of rung records,
    which only makes the next promotions a little more lenient; rewriting the growing file after
    every result cost ~1 ms a trial on the driver's thread (scripts/bench_overhead.py).
    """

    # Buffered results would deliver several epochs at once (Ray disables them for HyperBand too).
    _supports_buffered_results = False

    def __init__(
        self,
        objectives: Sequence[Objective],
        schedule: RungSchedule,
        time_attr: str = "epoch",
        state_path: str | os.PathLike[str] | None = None,
        save_every_s: float = 1.0,
        **options: Any,
    ) -> None:
        """`options`: MultiObjectiveRungs' keyword settings (promote_front, mature_at,
        mature_factor); their defaults are autotune's."""
        super().__init__()
        self.time_attr = time_attr
        self.state_path = Path(state_path) if state_path is not None else None
        self.save_every_s = save_every_s
        self._saved_at, self._dirty = 0.0, False
        self.options = dict(options)
        self.rungs = MultiObjectiveRungs(objectives, schedule, **self.options)
        if self.state_path is not None and self.state_path.exists():
            self.restore(str(self.state_path))

    @property
    def stopped(self) -> dict[str, int]:
        return self.rungs.stopped

    def set_progress(self, fraction: float) -> None:
        """The share of the study's budget spent (see `MultiObjectiveRungs.set_progress`)."""
        self.rungs.set_progress(fraction)

    def set_search_properties(self, metric: str | None, mode: str | None, **spec: Any) -> bool:
        # Refuse a TuneConfig metric: it would also make OptunaSearch single-objective
        # (ECOSYSTEM_NOTES), and Tune turns False into a ValueError naming the conflict.
        return metric is None and mode is None

    def on_trial_result(self, tune_controller: TuneController, trial: Trial, result: dict) -> str:
        names = self.rungs.metric_names
        if self.time_attr not in result or any(n not in result for n in names):
            return TrialScheduler.CONTINUE
        before = self.rungs.changes
        decision = self.rungs.on_result(
            trial.trial_id, int(result[self.time_attr]), {n: result[n] for n in names}
        )
        if self.rungs.changes != before:
            self._dirty = True
            if time.monotonic() - self._saved_at >= self.save_every_s:
                self.flush()
        return TrialScheduler.STOP if decision == "stop" else TrialScheduler.CONTINUE

    def choose_trial_to_run(self, tune_controller: TuneController) -> Trial | None:
        """The oldest pending trial that has no actor on the way, else FIFO's choice.

        With reuse_actors, Tune hands a finished trial's cached actor to the trial this returns.
        FIFO returns the oldest pending trial even when a new actor is already on the way for it
        (its worker process starting: ~1.5 s of CPU here); taking the cached actor kills that
        worker, and the next trial asks for one again. Trials shorter than a worker's start-up
        then stay at one running trial plus one worker starting and being killed, to the end of
        the study: half the runs of scripts/bench_overhead.py, autotune's and bare Ray's alike,
        ran so (1.6x the CPU, one trial at a time). A trial with no actor yet takes the cached
        one instead, and the older trial's worker gets to start.
        """
        # Tune's trial -> actor map (private: without it, plain FIFO)
        on_the_way = getattr(tune_controller, "_trial_to_actor", {})
        for trial in tune_controller.get_trials():
            if trial.status == Trial.PENDING and trial not in on_the_way:
                return trial
        return super().choose_trial_to_run(tune_controller)

    def debug_string(self) -> str:
        s = self.rungs.schedule
        counts = "/".join(str(len(t)) for t in self.rungs.rung_table().values()) or "-"
        rungs = "/".join(map(str, s.rungs)) or "none"
        return (
            f"MultiObjectiveASHA: rungs {rungs} of {s.max_epochs} epochs, eta {s.eta}; "
            f"recorded {counts}; stopped {len(self.stopped)}."
        )

    def flush(self) -> None:
        """Write the rung state to `state_path` if it changed since the last write."""
        if self.state_path is not None and self._dirty:
            self.save(str(self.state_path))
            self._dirty, self._saved_at = False, time.monotonic()

    def save(self, checkpoint_path: str) -> None:
        """Write the rung state as JSON via a temporary file: a crash never leaves half a file."""
        path = Path(checkpoint_path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(self.rungs.state(), allow_nan=False))
        os.replace(tmp, path)

    def restore(self, checkpoint_path: str) -> None:
        """Load rung state written by `save`; its objectives and schedule must match this one's."""
        try:
            state = json.loads(Path(checkpoint_path).read_text())
        except (OSError, ValueError) as e:
            raise StudyError(
                f"Cannot read scheduler state {checkpoint_path}: {e}.",
                fix="Delete the file to restart early stopping from empty rungs.",
            ) from e
        loaded = MultiObjectiveRungs.from_state(state, **self.options)
        if loaded.objectives != self.rungs.objectives or loaded.schedule != self.rungs.schedule:
            raise StudyError(
                f"Scheduler state {checkpoint_path} was made for objectives "
                f"{loaded.objectives} and {loaded.schedule}, but this study uses "
                f"{self.rungs.objectives} and {self.rungs.schedule}.",
                fix="Resume with the original objectives and rungs, or start a new study.",
            )
        loaded.progress = self.rungs.progress
        self.rungs = loaded


def scale_to_budget(
    metrics: Mapping[str, float], stopped_epoch: int, max_epochs: int, growing: Sequence[str]
) -> dict[str, float]:
    """Copy of `metrics` with the costs that grow with training scaled by max_epochs/stopped_epoch.

    Names in `growing` that the trial did not report are skipped (a meter may be unavailable here).
    """
    if not 1 <= stopped_epoch <= max_epochs:
        raise ValueError(f"stopped_epoch must be in [1, {max_epochs=}], but got {stopped_epoch=}.")
    factor = max_epochs / stopped_epoch
    out = dict(metrics)
    for name in growing:
        if name in out:
            out[name] = out[name] * factor
    return out
