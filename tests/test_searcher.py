"""What the sampler is told about finished, stopped and failed trials, and what enters the front."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import optuna
import pytest
from optuna.distributions import BaseDistribution
from optuna.trial import FrozenTrial, TrialState

from autotune.objectives import Constraint, Objective
from autotune.policy import Policy
from autotune.results import compute_front
from autotune.searcher import _MAX_REPEATS, REPEAT, PolicySearcher
from autotune.space import SearchSpace
from autotune.study import STATUS, view

OBJ = [Objective("accuracy", "max"), Objective("train_time_s", "min")]
SPACE = SearchSpace.from_dict({"optimizer.lr": {"loguniform": [1e-4, 1e-1]},
                               "batch_size": {"choice": [32, 64]}})


def make(stopped: dict[str, int], constraints: list[Constraint] | None = None,
         baseline: bool = False) -> tuple[PolicySearcher, optuna.Study, list]:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(directions=["maximize", "minimize"],
                                sampler=optuna.samplers.RandomSampler(seed=0))
    finished: list = []
    s = PolicySearcher(study=study, space=SPACE, base=Policy(epochs=9), objectives=OBJ,
                       constraints=constraints or [], baseline_needed=baseline, trial_config={},
                       on_finish=finished.append, stopped_by_scheduler=stopped.get)
    return s, study, finished


def run(s: PolicySearcher, tid: str, rows: list[dict], status: str | None = None) -> None:
    cfg = s.suggest(tid)
    assert cfg is not None and "policy" in cfg
    for r in rows:
        s.on_trial_result(tid, r)
    last = dict(rows[-1])
    if status:
        last["autotune_status"] = status
    s.on_trial_complete(tid, last)


def rows(epochs: int, acc: float, t_per_epoch: float) -> list[dict]:
    return [{"epoch": e, "accuracy": acc, "train_time_s": t_per_epoch * e,
             "autotune_status": "running"} for e in range(1, epochs + 1)]


def test_stopped_trial_is_told_complete_with_costs_scaled_to_the_full_budget() -> None:
    s, study, done = make(stopped={"b": 3})
    run(s, "a", rows(9, 0.95, 1.0), status="finished")
    run(s, "b", rows(3, 0.80, 0.5))  # stopped by the scheduler at epoch 3 of 9
    a, b = study.trials
    assert a.state == TrialState.COMPLETE and a.values == [0.95, 9.0]
    assert b.state == TrialState.COMPLETE
    # quality at the rung as is; time grows with epochs, so it is scaled by 9/3
    assert b.values == pytest.approx([0.80, 1.5 * 3])
    assert b.user_attrs[STATUS] == "stopped" and b.user_attrs["autotune.stopped_at_epoch"] == 3
    assert [v.status for v in done] == ["finished", "stopped"]


def test_a_stopped_trial_never_enters_the_front_even_when_it_would_dominate() -> None:
    s, study, _ = make(stopped={"b": 3})
    run(s, "a", rows(9, 0.90, 1.0), status="finished")
    run(s, "b", rows(3, 0.99, 0.1))  # better and cheaper, but only trained 3 epochs
    views = [view(t) for t in study.trials]
    front = compute_front(views, OBJ)
    assert [t.number for t in front.members] == [0]
    assert 1 not in front.ranks


def test_failed_and_diverged_trials_are_told_fail_and_recorded_with_their_reason() -> None:
    s, study, done = make(stopped={})
    run(s, "a", [{"epoch": 1, "autotune_status": "failed", "autotune_error": "boom"}])
    run(s, "b", [{"epoch": 2, "accuracy": math.nan, "train_time_s": 1.0,
                  "autotune_status": "diverged", "autotune_error": "loss became nan"}])
    assert [t.state for t in study.trials] == [TrialState.FAIL, TrialState.FAIL]
    assert [(v.status, v.error) for v in done] == [("failed", "boom"), ("diverged", "loss became nan")]


def test_trial_cut_without_a_scheduler_decision_is_interrupted_and_enqueued_again() -> None:
    s, study, done = make(stopped={})
    run(s, "a", rows(4, 0.9, 1.0))  # ended at epoch 4 of 9, not stopped by the scheduler
    assert done == []
    assert study.trials[0].state == TrialState.FAIL
    assert study.trials[0].user_attrs[STATUS] == "interrupted"
    waiting = study.get_trials(states=(TrialState.WAITING,))
    assert len(waiting) == 1
    assert waiting[0].system_attrs["fixed_params"] == study.trials[0].params


def test_constraints_are_set_through_optuna_and_infeasible_trials_leave_the_front() -> None:
    s, study, _ = make(stopped={}, constraints=[Constraint("train_time_s", "<=", 5.0)])
    run(s, "a", rows(9, 0.99, 1.0), status="finished")   # 9 s: infeasible
    run(s, "b", rows(9, 0.90, 0.5), status="finished")   # 4.5 s: feasible
    a, b = study.trials
    assert a.constraints == {"train_time_s": pytest.approx(4.0)}
    assert b.constraints == {"train_time_s": pytest.approx(-0.5)}
    front = compute_front([view(t) for t in study.trials], OBJ)
    assert [t.number for t in front.members] == [1]


def test_baseline_runs_first_with_the_default_policy_and_is_recorded_as_baseline() -> None:
    s, study, done = make(stopped={}, baseline=True)
    cfg = s.suggest("base")
    assert cfg["baseline"] is True and cfg["policy"] == Policy(epochs=9).flat()
    s.on_trial_complete("base", rows(9, 0.93, 1.0)[-1] | {"autotune_status": "finished"})
    (t,) = study.trials
    assert t.user_attrs["autotune.baseline"] is True
    # the sampler learns from the baseline with the knob values it really used
    assert t.params == {"optimizer.lr": 1e-3, "batch_size": 64}
    assert done[0].baseline


# ---- a sample that repeats a policy the study already ran is refused (a few times per trial)
CHOICE = SearchSpace.from_dict({"batch_size": {"choice": [32, 64, 128]}})


class Scripted(optuna.samplers.BaseSampler):
    """Proposes batch sizes from a script; notes the batch sizes of the other RUNNING trials it
    sees at each proposal (what TPE's constant liar would count as pending)."""

    def __init__(self, script: list[int]) -> None:
        self.script = list(script)
        self.pending_seen: list[list[int]] = []

    def infer_relative_search_space(self, study: optuna.Study,
                                    trial: FrozenTrial) -> dict[str, BaseDistribution]:
        return {}

    def sample_relative(self, study: optuna.Study, trial: FrozenTrial,
                        search_space: dict[str, BaseDistribution]) -> dict[str, Any]:
        return {}

    def sample_independent(self, study: optuna.Study, trial: FrozenTrial, name: str,
                           dist: BaseDistribution) -> Any:
        running = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
        self.pending_seen.append(sorted(t.params["batch_size"] for t in running
                                        if t.number != trial.number and "batch_size" in t.params))
        return self.script.pop(0)


def make_scripted(script: list[int], storage: str | None = None,
                  baseline: bool = False) -> tuple[PolicySearcher, optuna.Study, Scripted]:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    sampler = Scripted(script)
    study = optuna.create_study(directions=["maximize", "minimize"], sampler=sampler,
                                storage=storage)
    s = PolicySearcher(study=study, space=CHOICE, base=Policy(epochs=9), objectives=OBJ,
                       constraints=[], baseline_needed=baseline, trial_config={},
                       on_finish=lambda v: None, stopped_by_scheduler=lambda t: None)
    return s, study, sampler


def test_a_repeated_policy_is_refused_and_held_pending_while_the_sampler_asks_again() -> None:
    s, study, sampler = make_scripted([32, 32, 32, 64])
    run(s, "a", rows(9, 0.9, 1.0), status="finished")
    assert s.suggest("b")["policy"]["batch_size"] == 64
    # the two refused repeats were still pending when the sampler proposed 64
    assert sampler.pending_seen == [[], [], [32], [32, 32]]
    trials = study.trials
    assert [t.params["batch_size"] for t in trials] == [32, 32, 32, 64]
    assert [t.state for t in trials] == [TrialState.COMPLETE, TrialState.FAIL, TrialState.FAIL,
                                         TrialState.RUNNING]
    assert [t.user_attrs.get(STATUS) for t in trials[1:3]] == [REPEAT, REPEAT]
    assert [view(t) for t in trials[1:3]] == [None, None]  # not trials of the study's record


def test_a_repeat_runs_after_max_repeats_refusals_when_the_sampler_offers_nothing_new() -> None:
    s, study, _ = make_scripted([32] * (_MAX_REPEATS + 2))
    run(s, "a", rows(9, 0.9, 1.0), status="finished")
    assert s.suggest("b")["policy"]["batch_size"] == 32
    assert sum(t.user_attrs.get(STATUS) == REPEAT for t in study.trials) == _MAX_REPEATS


def test_a_running_trial_and_the_running_baseline_count_as_tried() -> None:
    s, _, _ = make_scripted([32, 64, 32, 128], baseline=True)
    assert s.suggest("base")["policy"]["batch_size"] == Policy().batch_size == 64
    assert s.suggest("a")["policy"]["batch_size"] == 32
    assert s.suggest("b")["policy"]["batch_size"] == 128  # 64: the baseline, 32: trial a


def test_an_enqueued_rerun_is_never_refused() -> None:
    s, study, _ = make_scripted([32])
    run(s, "a", rows(9, 0.9, 1.0), status="finished")
    study.enqueue_trial({"batch_size": 32})  # as a rerun of an interrupted trial is enqueued
    assert s.suggest("b")["policy"]["batch_size"] == 32
    assert not any(t.user_attrs.get(STATUS) == REPEAT for t in study.trials)


def test_on_a_database_refused_repeats_leave_no_record_in_the_study(tmp_path: Path) -> None:
    s, study, sampler = make_scripted([32, 32, 64], storage=f"sqlite:///{tmp_path / 's.db'}")
    assert s.sampler_study is not study  # the sampler works on an in-memory copy
    run(s, "a", rows(9, 0.9, 1.0), status="finished")
    run(s, "b", rows(9, 0.8, 0.5), status="finished")
    assert sampler.pending_seen[-1] == [32]
    assert [(t.number, t.params["batch_size"], t.state) for t in study.trials] == [
        (0, 32, TrialState.COMPLETE), (1, 64, TrialState.COMPLETE)]


def test_on_a_database_an_interrupted_trial_reruns_with_its_params(tmp_path: Path) -> None:
    s, study, _ = make_scripted([32, 64], storage=f"sqlite:///{tmp_path / 's.db'}")
    run(s, "a", rows(9, 0.9, 1.0), status="finished")
    run(s, "b", rows(4, 0.8, 0.5))  # cut at epoch 4 without a scheduler decision: interrupted
    cfg = s.suggest("c")  # the script is spent: the rerun must come from the study's queue
    assert cfg["policy"]["batch_size"] == 64 and cfg["trial_number"] == 2
    assert [(t.params["batch_size"], t.state) for t in study.trials] == [
        (32, TrialState.COMPLETE), (64, TrialState.FAIL), (64, TrialState.RUNNING)]


def test_on_a_database_the_view_handed_on_is_what_the_study_reads_back(tmp_path: Path) -> None:
    """The driver gets each ended trial's view without reading it back from SQLite: it must be
    exactly what a later run reads (MLflow's replay idempotency keys on its times)."""
    s, study, _ = make_scripted([32, 64], storage=f"sqlite:///{tmp_path / 's.db'}")
    finished: list = []
    s.on_finish = finished.append
    run(s, "a", rows(9, 0.9, 1.0), status="finished")
    run(s, "b", rows(3, 0.8, 0.5), status="failed")
    again = optuna.load_study(study_name=study.study_name, storage=f"sqlite:///{tmp_path / 's.db'}")
    assert [view(t) for t in again.trials] == finished
    assert finished[0].started < finished[0].ended and finished[1].status == "failed"
