"""What the sampler is told about finished, stopped and failed trials, and what enters the front."""

from __future__ import annotations

import math

import optuna
import pytest
from optuna.trial import TrialState

from autotune.objectives import Constraint, Objective
from autotune.policy import Policy
from autotune.results import compute_front
from autotune.searcher import PolicySearcher
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
