"""The Ray Tune searcher over Optuna's ask/tell: what the sampler is told, kept apart from what the study records."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import optuna
from optuna.trial import TrialState
from ray.tune.search import Searcher

from autotune import study as st
from autotune.costs import GROWING_COSTS
from autotune.errors import PolicyError
from autotune.objectives import Constraint, Objective
from autotune.policy import Policy
from autotune.scheduler import scale_to_budget
from autotune.space import SearchSpace
from autotune.study import TrialView

_MAX_INVALID = 50  # consecutive invalid samples before the space is declared unusable
# Asks per trial that may be refused for repeating a policy the study already ran or is running.
# In a space of choices, TPE's best candidate is often a policy it has already run: without this
# rule, 44 % of the epochs on the digits table and 33 % on charlm went to policies run before
# (scripts/bench_search.py, previous defaults = autotune-prev), and a repeat adds nothing to the
# front. Past this many refusals the repeat runs: the space may have nothing new to offer. 5: 3
# left more repeats (worse regret late in the study), 10 was no better and asked twice as often.
_MAX_REPEATS = 5
REPEAT = "repeat"  # the status of a refused ask, recorded in the study only when it is in memory


@dataclass
class _Live:
    """A trial Ray is running: its Optuna handle (None for the baseline) and what it reported."""

    number: int | None
    policy: Policy
    baseline: bool
    ot: optuna.trial.Trial | None
    record_id: int | None = None  # its id in the study's storage when `ot` is the sampler's copy
    started: float | None = None  # its record's start time in the study, when mirrored
    last: dict[str, Any] = field(default_factory=dict)
    curves: list[dict[str, float]] = field(default_factory=list)


class PolicySearcher(Searcher):
    """Asks Optuna for policies and tells it results.

    The sampler view (DESIGN §5, benchmark-backed): a trial stopped early is told COMPLETE with
    its values at the rung where it stopped, costs that grow with training scaled up to the full
    budget; multi-objective TPE learns more from that than from PRUNED/FAIL. The study view: only
    trials that trained the whole budget ("finished") may enter the front; `autotune.status`
    records which is which.

    Repeats (benchmark-backed, see `_MAX_REPEATS`): a sample whose params equal those of a trial
    the study already ran (finished or stopped) or is running is refused and the sampler asked
    again, up to `max_repeats` times per trial. The refused asks stay RUNNING in the sampler's
    view until a policy is picked, so TPE's constant liar steers the next ask away from them, and
    are then told FAIL. They are not trials of the study: on a database only the sampler's
    in-memory copy holds them; an in-memory study (the sampler's own) records them as FAIL with
    status "repeat", which no view shows.

    On a database storage (the study's SQLite file), the sampler works on an in-memory copy of
    the study and the database is written twice per trial, in one transaction each: the running
    trial with its params when it is asked for, its state, values and attributes when it ends.
    Sampling straight on the database read the running trials back and committed every param on
    its own, ~40 ms per trial on the driver's thread; Ray Tune's loop waits on that, which made
    `autotune search` 2.7x a bare Ray Tune run of the same no-op trials (bench_overhead.py).
    """

    def __init__(self, *, study: optuna.Study, space: SearchSpace, base: Policy,
                 objectives: Sequence[Objective], constraints: Sequence[Constraint],
                 baseline_needed: bool, trial_config: dict[str, Any],
                 on_finish: Callable[[TrialView], None],
                 stopped_by_scheduler: Callable[[str], int | None],
                 max_repeats: int = _MAX_REPEATS) -> None:
        """`max_repeats`: asks per trial that may be refused for repeating a policy the study
        already ran or is running (0: never refuse; see `_MAX_REPEATS`)."""
        super().__init__(metric=None, mode=None)
        self.study = study
        self.space = space
        self.base = base
        self.objectives = list(objectives)
        self.constraints = list(constraints)
        self.baseline_needed = baseline_needed
        self.trial_config = trial_config
        self.on_finish = on_finish
        self.stopped_by_scheduler = stopped_by_scheduler
        self.max_repeats = max(0, int(max_repeats))
        self.live: dict[str, _Live] = {}
        self.sampler_seconds = 0.0  # time spent in ask + sampling, for the overhead benchmark
        self.finished = False  # set by the driver: suggest no more trials
        self._baseline_key: tuple[tuple[str, Any], ...] | None = None  # its params, see _tried
        self.sampler_study = _sampler_copy(study)  # the study itself unless it is on a database
        self._mirrored = self.sampler_study is not study
        # Trials enqueued for a rerun (WAITING in the study): asked for on the study itself.
        self._waiting = (len(study.get_trials(deepcopy=False, states=(TrialState.WAITING,)))
                         if self._mirrored else 0)

    def __getstate__(self) -> dict[str, Any]:
        # Ray pickles the searcher into its experiment folder; the study's truth is Optuna's storage,
        # so nothing live (storage handles, callbacks) needs to travel.
        return {"baseline_needed": self.baseline_needed}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)

    def save(self, checkpoint_path: str) -> None:
        return None  # state lives in Optuna's storage

    def restore(self, checkpoint_path: str) -> None:
        return None

    def set_search_properties(self, metric: str | None, mode: str | None, config: dict,
                              **spec: Any) -> bool:
        return True  # objectives are ours; a TuneConfig metric would make the study single-objective

    # ---- asking ------------------------------------------------------------------------------
    def suggest(self, trial_id: str) -> dict[str, Any] | str | None:
        if getattr(self, "finished", False):
            return Searcher.FINISHED  # the driver gave up on the study (every trial failed)
        if self.baseline_needed:
            self.baseline_needed = False
            live = _Live(None, self.base, True, None)
        else:
            live = self._ask()
        self.live[trial_id] = live
        return {**self.trial_config, "policy": live.policy.flat(), "trial_number": live.number,
                "baseline": live.baseline}

    def _ask(self) -> _Live:
        """The next policy to run. A sample that repeats the params of a trial the study already
        ran or is running is refused, up to `max_repeats` times per trial (see `_MAX_REPEATS`);
        a rerun enqueued in the study is never refused."""
        t0 = time.perf_counter()
        tried = self._tried()
        refused: list[optuna.trial.Trial] = []
        invalid = 0
        try:
            while True:
                if self._mirrored:
                    ot, overrides, record = self._ask_mirrored()
                else:
                    ot = self.study.ask()
                    overrides = self.space.suggest(ot)
                    record = None
                rerun = record is not None or (not self._mirrored and "fixed_params" in
                                               self.study._storage.get_trial_system_attrs(
                                                   ot._trial_id))
                if (not rerun and len(refused) < self.max_repeats
                        and _params_key(ot.params) in tried):
                    # Held RUNNING until a policy is picked: TPE's constant liar counts it as a
                    # bad result, so the next ask moves away from the repeat, not onto it again.
                    refused.append(ot)
                    continue
                if self._mirrored and record is None:
                    record = self._record(ot)
                record_id, number, started = (record if record is not None
                                              else (None, ot.number, None))
                try:
                    policy = self.base.with_overrides(overrides, source=f"a sample of {self.space.source}")
                except PolicyError as exc:
                    # Tell the sampler this region is invalid; it is not a trial of the study.
                    ot.set_user_attr(st.STATUS, "invalid")
                    ot.set_user_attr(st.ERROR, exc.message[:500])
                    self.sampler_study.tell(ot, state=TrialState.FAIL)
                    if self._mirrored:
                        st.write_trial(self.study, record_id,
                                       {st.STATUS: "invalid", st.ERROR: exc.message[:500]}, {},
                                       end=(TrialState.FAIL, None))
                    invalid += 1
                    if invalid >= _MAX_INVALID:
                        break
                    continue
                # The policy is recorded with the trial's other attributes at tell time, in one
                # storage transaction (a SQLite commit costs ~6 ms here: docs/BENCHMARKS.md).
                return _Live(number, policy, False, ot, record_id, started)
        finally:
            for ref in refused:  # on a database only the sampler's in-memory copy held them
                if not self._mirrored:
                    ref.set_user_attr(st.STATUS, REPEAT)
                self.sampler_study.tell(ref, state=TrialState.FAIL)
            self.sampler_seconds += time.perf_counter() - t0
        raise PolicyError(
            f"{_MAX_INVALID} samples in a row from {self.space.source} gave invalid policies.",
            fix="add `when:` conditions or narrow ranges so that samples form valid policies.",
        )

    def _tried(self) -> set[tuple[tuple[str, Any], ...]]:
        """Params of the trials the sampler has seen run or running (stopped ones included: a
        policy stopped at a rung would be stopped there again), and of the baseline while it runs
        (it enters the sampler's study only when it ends)."""
        trials = self.sampler_study.get_trials(deepcopy=False,
                                               states=(TrialState.COMPLETE, TrialState.RUNNING))
        tried = {_params_key(t.params) for t in trials}
        if any(live.baseline for live in self.live.values()):
            if self._baseline_key is None:
                self._baseline_key = _params_key(self._baseline_params()[0])
            if self._baseline_key:  # empty: the baseline's values are not points of the space
                tried.add(self._baseline_key)
        return tried

    def _ask_mirrored(self) -> tuple[optuna.trial.Trial, dict[str, Any],
                                     tuple[int, int, float] | None]:
        """Sample on the in-memory copy; a rerun enqueued in the study (WAITING there) is popped
        there and mirrored, and comes with its record's (id, number), else the record is None."""
        if self._waiting > 0:
            self._waiting -= 1
            rec = self.study.ask()
            self.space.suggest(rec)
            self.sampler_study.enqueue_trial(rec.params)
            ot = self.sampler_study.ask()
            started = rec.datetime_start.timestamp() if rec.datetime_start else None
            return ot, self.space.suggest(ot), (rec._trial_id, rec.number, started)
        ot = self.sampler_study.ask()
        return ot, self.space.suggest(ot), None

    def _record(self, ot: optuna.trial.Trial) -> tuple[int, int, float]:
        """Record a trial sampled on the copy as running, with its params, in the study in one
        transaction (a killed driver leaves it RUNNING: the next run reruns it); (id, number,
        start time)."""
        return st.create_running(self.study, ot.params, ot.distributions)

    # ---- telling -----------------------------------------------------------------------------
    def on_trial_result(self, trial_id: str, result: dict) -> None:
        live = self.live.get(trial_id)
        if live is None:
            return
        live.last = dict(result)
        row = _reported(result)
        if row and "epoch" in row:
            # A trial Ray runs again (its node died: FailureConfig retries) restarts at epoch 1:
            # the curve keeps the attempt that counts, not both.
            live.curves = [c for c in live.curves if c.get("epoch", 0) < row["epoch"]]
            live.curves.append(row)

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        live = self.live.pop(trial_id, None)
        if live is None:
            return
        last = dict(result or live.last or {})
        # The result that made the scheduler stop a trial reaches on_trial_complete only, never
        # on_trial_result: without this the curve of every stopped trial lacks its last epoch.
        row = _reported(last)
        if "epoch" in row and len(row) > 1 and (
                not live.curves or live.curves[-1].get("epoch", 0) < row["epoch"]):
            live.curves.append(row)
        status, err = self._status(trial_id, live, last, error)
        metrics = {k: v for k, v in row.items() if k != "epoch"}
        epoch = int(last.get("epoch", 0) or 0)
        t0 = time.perf_counter()
        if status == st.INTERRUPTED:
            self._interrupted(live)
            return
        attrs = {st.STATUS: status, st.POLICY: live.policy.flat(), st.METRICS: _finite(metrics),
                 st.CURVES: live.curves, st.RAY_ID: trial_id, st.BASELINE: live.baseline}
        for key, field_ in ((st.NODE, "autotune_node"), (st.HOST, "hostname")):
            if isinstance(last.get(field_), str):  # where it ran (multi-node clusters)
                attrs[key] = last[field_]
        if status == "stopped":
            attrs[st.STOPPED_AT] = epoch
        if err:
            attrs[st.ERROR] = err[:2000]
        told = metrics
        if status == "stopped":
            told = scale_to_budget(metrics, max(1, epoch), self.base.epochs, GROWING_COSTS)
        values = [told.get(o.metric, math.nan) for o in self.objectives]
        ok = status in ("finished", "stopped") and all(math.isfinite(v) for v in values)
        constraints = {c.metric: c.violation(told[c.metric]) for c in self.constraints
                       if c.metric in told and math.isfinite(told[c.metric])}
        number, ended = self._tell(live, attrs, values if ok else None, constraints)
        self.sampler_seconds += time.perf_counter() - t0
        if live.record_id is not None and ended is not None:
            # What was just written, without reading it back (~4 ms a trial on SQLite).
            view = st.view_from(number, attrs, {f"constraints:{k}": v for k, v in
                                                constraints.items()}, live.started, ended)
        else:
            storage = self.study._storage
            view = st.view(storage.get_trial(storage.get_trial_id_from_study_id_trial_number(
                self.study._study_id, number)))
        assert view is not None
        self.on_finish(view)

    def _status(self, trial_id: str, live: _Live, last: dict, error: bool) -> tuple[str, str | None]:
        reported = last.get("autotune_status")
        if error:
            return "failed", ("the trial's worker process crashed or was killed "
                              "(see the Ray logs under the study folder)")
        if reported in ("failed", "diverged"):
            return reported, str(last.get("autotune_error") or reported)
        if reported == "finished":
            return "finished", None
        if self.stopped_by_scheduler(trial_id) is not None:
            return "stopped", None
        return st.INTERRUPTED, None  # cut by Ctrl-C or the time budget: it will run again

    def _tell(self, live: _Live, attrs: dict[str, Any], values: list[float] | None,
              constraints: dict[str, float]) -> tuple[int, float | None]:
        """Record the ended trial and tell the sampler; its number and, for a trial recorded
        through write_trial with an end, the completion time written."""
        if live.baseline:
            return self._add_baseline(attrs, values, constraints), None
        ot = live.ot
        assert ot is not None
        if live.record_id is not None:  # the study gets the record, the sampler's copy the result
            end = (TrialState.FAIL, None) if values is None else (TrialState.COMPLETE, values)
            ended = st.write_trial(self.study, live.record_id, attrs, constraints, end=end)
            for k, v in constraints.items():  # in memory: what a constrained sampler reads
                self.sampler_study._storage.set_trial_system_attr(
                    ot._trial_id, f"constraints:{k}", float(v))
            if values is None:
                self.sampler_study.tell(ot, state=TrialState.FAIL)
            else:
                self.sampler_study.tell(ot, values)
            assert live.number is not None
            return live.number, ended
        st.write_trial(self.study, ot._trial_id, attrs, constraints)
        ot._cached_frozen_trial.user_attrs.update(attrs)  # what set_user_attr would have cached
        ot._cached_frozen_trial.system_attrs.update(
            {f"constraints:{k}": float(v) for k, v in constraints.items()})
        if values is None:
            self.study.tell(ot, state=TrialState.FAIL)
        else:
            self.study.tell(ot, values)
        return ot.number, None

    def _add_baseline(self, attrs: dict[str, Any], values: list[float] | None,
                      constraints: dict[str, float]) -> int:
        """The baseline enters Optuna with the params it really used, so the sampler learns from it."""
        params, dists = self._baseline_params()
        system = {f"constraints:{k}": v for k, v in constraints.items()}
        frozen = optuna.trial.create_trial(
            state=TrialState.COMPLETE if values is not None else TrialState.FAIL,
            values=values, params=params, distributions=dists, user_attrs=attrs,
            system_attrs=system)
        self.study.add_trial(frozen)
        if self._mirrored:
            self.sampler_study.add_trial(frozen)
        return self.study._storage.get_n_trials(self.study._study_id) - 1

    def _baseline_params(self) -> tuple[dict[str, Any], dict[str, Any]]:
        known = self.space.trial_params({k: v for k, v in self.base.flat().items()})
        scratch = optuna.create_study(directions=self.study.directions)
        scratch.enqueue_trial(known)
        probe = scratch.ask()
        try:
            self.space.suggest(probe)
        except Exception:
            return {}, {}
        dists = {k: d for k, d in probe.distributions.items() if k in known}
        params = {k: known[k] for k in dists if probe.params.get(k) == known[k]}
        return params, {k: dists[k] for k in params}

    def _interrupted(self, live: _Live) -> None:
        if live.ot is None:
            self.baseline_needed = True
            return
        if live.record_id is not None:
            self.study._storage.set_trial_user_attr(live.record_id, st.STATUS, st.INTERRUPTED)
            self.study._storage.set_trial_state_values(live.record_id, TrialState.FAIL)
            self.sampler_study.tell(live.ot, state=TrialState.FAIL)
        else:
            live.ot.set_user_attr(st.STATUS, st.INTERRUPTED)
            self.study.tell(live.ot, state=TrialState.FAIL)
        if live.ot.params:
            self.study.enqueue_trial(live.ot.params, user_attrs={"autotune.rerun_of": live.number})
            if self._mirrored:
                self._waiting += 1

    def abandon_running(self) -> None:
        """At the end of a run (budget spent, Ctrl-C): trials still live will run again next time."""
        for trial_id in list(self.live):
            self._interrupted(self.live.pop(trial_id))


def _sampler_copy(study: optuna.Study) -> optuna.Study:
    """`study` itself, or, when it is on a database, an in-memory study with the same sampler and
    directions holding its finished trials (WAITING ones stay in the database until asked for)."""
    if st.rdb_backend(study) is None:
        return study
    copy = optuna.create_study(directions=study.directions, sampler=study.sampler)
    copy.add_trials([t for t in study.get_trials(deepcopy=False) if t.state.is_finished()])
    return copy


def _params_key(params: dict[str, Any]) -> tuple[tuple[str, Any], ...]:
    return tuple(sorted(params.items()))


def _finite(metrics: dict[str, float]) -> dict[str, float]:
    return {k: v for k, v in metrics.items() if math.isfinite(v)}


_RAY_KEYS = {"training_iteration", "time_this_iter_s", "time_total_s", "timestamp", "pid",
             "time_since_restore", "iterations_since_restore", "done", "config", "node_ip",
             "trial_id", "date", "hostname", "experiment_tag", "checkpoint_dir_name",
             "should_checkpoint", "diverged", "trial_number"}


def _reported(result: dict) -> dict[str, float]:
    """The metrics a trial itself reported (Ray adds bookkeeping fields of its own), as floats."""
    return {k: float(v) for k, v in result.items()
            if k not in _RAY_KEYS and not k.startswith(("autotune_", "config/"))
            and isinstance(v, int | float) and not isinstance(v, bool)}
