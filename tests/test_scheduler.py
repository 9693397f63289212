"""Tests for autotune.scheduler: rung schedule, Pareto promotion at rungs, a real Ray Tune run."""

from __future__ import annotations

import os

# Quiet Ray before anything imports it (ECOSYSTEM_NOTES); setdefault keeps a developer's choice.
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")

import json  # noqa: E402
import math  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

from autotune.errors import StudyError  # noqa: E402
from autotune.scheduler import (  # noqa: E402
    MultiObjectiveASHA,
    MultiObjectiveRungs,
    RungSchedule,
    scale_to_budget,
)

OBJECTIVES = [("acc", "max"), ("cost", "min")]


def _rungs(eta: int = 3, rungs: tuple[int, ...] = (3, 9), max_epochs: int = 27):
    return MultiObjectiveRungs(
        OBJECTIVES, RungSchedule(rungs=rungs, max_epochs=max_epochs, eta=eta)
    )


def _at_rung(
    sched: MultiObjectiveRungs, trial: str, acc: float, cost: float, epoch: int = 3
) -> str:
    return sched.on_result(trial, epoch, {"acc": acc, "cost": cost})


# --- RungSchedule -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("grace", "eta", "max_epochs", "rungs"),
    [(3, 3, 81, (3, 9, 27)), (3, 3, 82, (3, 9, 27, 81)), (1, 2, 9, (1, 2, 4, 8)), (5, 3, 5, ())],
)
def test_geometric(grace: int, eta: int, max_epochs: int, rungs: tuple[int, ...]) -> None:
    s = RungSchedule.geometric(grace, eta, max_epochs)
    assert s == RungSchedule(rungs=rungs, max_epochs=max_epochs, eta=eta)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("3,9,27", RungSchedule(rungs=(3, 9, 27), max_epochs=30, eta=3)),
        (" 3, 9 ,27,81 ", RungSchedule(rungs=(3, 9, 27), max_epochs=30, eta=3)),  # 81 dropped
        ("3,9,30", RungSchedule(rungs=(3, 9), max_epochs=30, eta=3)),  # == max_epochs dropped
        ("2,4,eta=2", RungSchedule(rungs=(2, 4), max_epochs=30, eta=2)),
        ("grace=3,eta=3", RungSchedule(rungs=(3, 9, 27), max_epochs=30, eta=3)),
        ("eta=2,grace=4", RungSchedule(rungs=(4, 8, 16), max_epochs=30, eta=2)),
        ("grace=3", RungSchedule(rungs=(3, 9, 27), max_epochs=30, eta=3)),
    ],
)
def test_parse(text: str, expected: RungSchedule) -> None:
    assert RungSchedule.parse(text, max_epochs=30) == expected


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("", "empty"),
        ("3,x", r"'x' is not a positive integer"),
        ("3,-9", r"'-9' is not a positive integer"),
        ("grace=3,beta=2", r"unknown key 'beta'"),
        ("grace=3,grace=4", r"'grace' given twice"),
        ("3,9,grace=3", "either explicit rungs or grace="),
        ("eta=3", "no rungs and no grace="),
        ("9,3", r"strictly ascending.*\(9, 3\)"),
        ("3,3", "strictly ascending"),
        ("3,9,eta=1", "eta must be an integer >= 2, but got 1"),
        ("grace=0", "grace must be an integer >= 1"),
    ],
)
def test_parse_errors(text: str, match: str) -> None:
    with pytest.raises(StudyError, match=match) as info:
        RungSchedule.parse(text, max_epochs=30)
    assert info.value.fix and "grace=3,eta=3" in info.value.fix


def test_constructor_refuses_rung_at_or_past_max_epochs() -> None:
    with pytest.raises(StudyError, match=r"< max_epochs=9, but got \(3, 9\)"):
        RungSchedule(rungs=(3, 9), max_epochs=9)


# --- MultiObjectiveRungs ----------------------------------------------------------------------


def test_first_trial_at_rung_continues() -> None:
    s = _rungs()
    assert _at_rung(s, "a", acc=0.01, cost=1e9) == "continue"  # terrible, but alone at the rung


def test_not_at_rung_continues() -> None:
    s = _rungs()
    for epoch in (1, 2):
        assert _at_rung(s, "a", 0.1, 10.0, epoch=epoch) == "continue"
    assert s.rung_table() == {3: {}, 9: {}}


def test_dominated_stops_and_tradeoff_continues() -> None:
    # eta=2 so that two of three continue. Promotion follows non-dominated rank, not one metric:
    # "cheap" has the worst accuracy but the lowest cost and continues; "good" dominates "meh".
    s = _rungs(eta=2)
    assert _at_rung(s, "good", acc=0.9, cost=10.0) == "continue"
    assert _at_rung(s, "meh", acc=0.5, cost=20.0) == "stop"  # n=2, quota 1, rank 1
    assert _at_rung(s, "cheap", acc=0.3, cost=1.0) == "continue"  # n=3, quota 2, rank 0
    assert s.stopped == {"meh": 3}
    assert s.rung_table()[3] == {"good": (0.9, 10.0), "meh": (0.5, 20.0), "cheap": (0.3, 1.0)}


def test_ceil_n_over_eta_quota() -> None:
    # eta=3, every newcomer the best so far (dominates all): positions are always 0 -> continue.
    s = _rungs(eta=3)
    for i in range(5):
        assert _at_rung(s, f"up{i}", acc=0.1 * (i + 1), cost=10.0 - i) == "continue"
    # Newcomers worse than everyone: position n-1; continue only if n-1 < ceil(n/3).
    t = _rungs(eta=3)
    expected = []
    for i in range(7):
        n = i + 1
        expected.append("continue" if n - 1 < math.ceil(n / 3) else "stop")
        assert _at_rung(t, f"down{i}", acc=1.0 - 0.1 * i, cost=1.0 + i) == expected[-1]
    assert expected == ["continue", "stop", "stop", "stop", "stop", "stop", "stop"]


def test_ceil_quota_with_middle_arrivals() -> None:
    # Six trials on one line of dominance (t0 best ... t5 worst) arriving out of order, eta=3.
    # At each arrival: position among recorded so far vs ceil(n/3).
    s = _rungs(eta=3)
    quality = {"t0": 0, "t1": 1, "t2": 2, "t3": 3, "t4": 4, "t5": 5}
    arrivals = ["t3", "t4", "t1", "t5", "t0", "t2"]
    # n=1 t3 pos0 q1 C; n=2 t4 pos1 q1 S; n=3 t1 pos0 q1 C; n=4 t5 pos3 q2 S; n=5 t0 pos0 q2 C;
    # n=6 t2 pos2 (after t0, t1) q2 S.
    want = ["continue", "stop", "continue", "stop", "continue", "stop"]
    got = [_at_rung(s, t, acc=1 - 0.1 * quality[t], cost=float(quality[t])) for t in arrivals]
    assert got == want
    assert s.stopped == {"t4": 3, "t5": 3, "t2": 3}


def test_trial_recorded_once_per_rung_and_later_rungs_independent() -> None:
    s = _rungs(eta=2)
    assert _at_rung(s, "a", 0.9, 1.0) == "continue"
    # A second report at the same rung (e.g. a re-run after a restore) does not re-record.
    assert _at_rung(s, "a", 0.1, 99.0) == "continue"
    assert s.rung_table()[3] == {"a": (0.9, 1.0)}
    assert _at_rung(s, "a", 0.9, 1.0, epoch=5) == "continue"
    assert _at_rung(s, "a", 0.95, 1.0, epoch=9) == "continue"
    assert s.rung_table()[9] == {"a": (0.95, 1.0)}


def test_skipped_rung_epoch_records_at_highest_rung_reached() -> None:
    s = _rungs()
    assert _at_rung(s, "a", 0.5, 5.0, epoch=10) == "continue"
    assert s.rung_table() == {3: {}, 9: {"a": (0.5, 5.0)}}


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
@pytest.mark.parametrize("epoch", [1, 3])
def test_non_finite_stops(bad: float, epoch: int) -> None:
    s = _rungs()
    assert _at_rung(s, "ok", 0.5, 5.0) == "continue"
    assert _at_rung(s, "nan", bad, 5.0, epoch=epoch) == "stop"
    assert s.stopped == {"nan": epoch}
    assert "nan" not in s.rung_table()[3]  # kept off the rung: it must not widen the quota
    assert _at_rung(s, "nan", 0.9, 1.0, epoch=epoch + 1) == "stop"  # stays stopped


def test_missing_objective_raises() -> None:
    s = _rungs()
    with pytest.raises(StudyError, match=r"reported no \['cost'\] at epoch 3"):
        s.on_result("a", 3, {"acc": 0.5})


@pytest.mark.parametrize(
    ("objectives", "match"),
    [
        ([], "no objectives"),
        ([("acc", "maximise")], r"\('acc', 'maximise'\) must be"),
        ([("acc", "max"), ("acc", "min")], "repeat"),
    ],
)
def test_bad_objectives(objectives: list, match: str) -> None:
    with pytest.raises(StudyError, match=match):
        MultiObjectiveRungs(objectives, RungSchedule(rungs=(3,), max_epochs=9))


def test_state_round_trip_through_json() -> None:
    s = _rungs(eta=2)
    _at_rung(s, "good", 0.9, 10.0)
    _at_rung(s, "meh", 0.5, 20.0)
    _at_rung(s, "good", 0.92, 9.0, epoch=9)
    _at_rung(s, "nan", float("nan"), 1.0, epoch=2)
    text = json.dumps(s.state(), allow_nan=False)
    r = MultiObjectiveRungs.from_state(json.loads(text))
    assert r.rung_table() == s.rung_table()
    assert r.stopped == s.stopped == {"meh": 3, "nan": 2}
    assert r.objectives == s.objectives and r.schedule == s.schedule
    # The restored instance keeps deciding against the old rung data.
    assert _at_rung(r, "cheap", 0.3, 1.0) == "continue"
    assert _at_rung(r, "worse", 0.2, 30.0) == "stop"


def test_from_state_refuses_unknown_version() -> None:
    state = _rungs().state() | {"version": 99}
    with pytest.raises(StudyError, match="version 99"):
        MultiObjectiveRungs.from_state(state)


# --- Ray adapter without Ray running --------------------------------------------------------


class _FakeTrial:
    def __init__(self, trial_id: str) -> None:
        self.trial_id = trial_id


def _asha(**kw) -> MultiObjectiveASHA:
    return MultiObjectiveASHA(OBJECTIVES, RungSchedule(rungs=(3,), max_epochs=9, eta=2), **kw)


def test_adapter_decisions_and_missing_metrics() -> None:
    sched = _asha()
    assert sched.metric is None
    a, b = _FakeTrial("a"), _FakeTrial("b")
    assert sched.on_trial_result(None, a, {"epoch": 3, "acc": 0.9, "cost": 1.0}) == "CONTINUE"
    assert sched.on_trial_result(None, b, {"epoch": 3, "acc": 0.1}) == "CONTINUE"  # no cost
    assert sched.on_trial_result(None, b, {"acc": 0.1, "cost": 5.0}) == "CONTINUE"  # no epoch
    assert sched.on_trial_result(None, b, {"epoch": 3, "acc": 0.1, "cost": 5.0}) == "STOP"
    assert sched.stopped == {"b": 3}
    assert "rungs 3 of 9 epochs, eta 2; recorded 2; stopped 1" in sched.debug_string()


class _FakeController:
    """What choose_trial_to_run reads of Tune's controller: its trials and the trial -> actor map."""

    def __init__(self, trials: list, on_the_way: list) -> None:
        self.trials, self._trial_to_actor = trials, {t: object() for t in on_the_way}

    def get_trials(self) -> list:
        return self.trials


def _trial(name: str, status: str) -> _FakeTrial:
    t = _FakeTrial(name)
    t.status = status  # type: ignore[attr-defined]
    return t


def test_the_trial_to_run_is_the_oldest_pending_one_with_no_actor_on_the_way() -> None:
    sched = _asha()
    done, old, new, newer = (_trial("done", "TERMINATED"), _trial("old", "PENDING"),
                             _trial("new", "PENDING"), _trial("newer", "PENDING"))
    # old's worker is starting: a cached actor goes to new, so that worker is not killed
    assert sched.choose_trial_to_run(_FakeController([done, old, new, newer], [old])) is new
    assert sched.choose_trial_to_run(_FakeController([done, old, new, newer], [])) is old
    # every pending trial has an actor on the way: FIFO, then paused trials, then none
    assert sched.choose_trial_to_run(_FakeController([old, new], [old, new])) is old
    paused = _trial("paused", "PAUSED")
    assert sched.choose_trial_to_run(_FakeController([done, paused], [])) is paused
    assert sched.choose_trial_to_run(_FakeController([done], [])) is None


def test_adapter_refuses_tune_config_metric() -> None:
    sched = _asha()
    assert sched.set_search_properties(None, None) is True
    assert sched.set_search_properties("acc", "max") is False


def test_adapter_save_restore_and_state_path(tmp_path: Path) -> None:
    path = tmp_path / "sched" / "state.json"
    sched = _asha(state_path=path)
    sched.on_trial_result(None, _FakeTrial("a"), {"epoch": 3, "acc": 0.9, "cost": 1.0})
    assert path.exists()  # the first change is written at once
    sched.on_trial_result(None, _FakeTrial("b"), {"epoch": 3, "acc": 0.1, "cost": 5.0})
    assert json.loads(path.read_text())["stopped"] == {}  # the next only a second later...
    sched.flush()  # ...or when the driver flushes
    assert json.loads(path.read_text())["stopped"] == {"b": 3}
    resumed = _asha(state_path=path)  # a resumed study picks the rung data up
    assert resumed.rungs.rung_table() == sched.rungs.rung_table()
    assert resumed.stopped == {"b": 3}
    other = MultiObjectiveASHA(OBJECTIVES, RungSchedule(rungs=(3,), max_epochs=9, eta=3))
    with pytest.raises(StudyError, match="was made for objectives"):
        other.restore(str(path))
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(StudyError, match="Cannot read scheduler state"):
        other.restore(str(tmp_path / "bad.json"))


# --- scale_to_budget --------------------------------------------------------------------------


def test_scale_to_budget() -> None:
    metrics = {"acc": 0.7, "train_time_s": 3.0, "train_flops": 1e9, "latency_ms": 2.0}
    out = scale_to_budget(metrics, 3, 9, ["train_time_s", "train_flops", "energy_j"])
    assert out == {"acc": 0.7, "train_time_s": 9.0, "train_flops": 3e9, "latency_ms": 2.0}
    assert metrics["train_time_s"] == 3.0  # a copy
    assert scale_to_budget(metrics, 9, 9, ["train_time_s"]) == metrics


@pytest.mark.parametrize("epoch", [0, 10])
def test_scale_to_budget_rejects_bad_epoch(epoch: int) -> None:
    with pytest.raises(ValueError, match=f"stopped_epoch={epoch}"):
        scale_to_budget({}, epoch, 9, [])


# --- Integration: a real Ray Tune study ------------------------------------------------------

# Per-config (acc, cost) at the full budget; each epoch reports a fixed fraction of both, so the
# ordering at the rung is the ordering here. With eta=2, one rung at epoch 3 and trials run one
# at a time in this order: A first (continues), B dominated by A (n=2, quota 1 -> stop),
# C worst acc but cheapest (rank 0, n=3, quota 2 -> continues), D dominated (n=4, quota 2 ->
# rank 1 -> stop), E dominates A (rank 0, n=5, quota 3 -> continues).
QUALITY = {"A": (0.9, 10.0), "B": (0.5, 20.0), "C": (0.3, 1.0), "D": (0.8, 15.0), "E": (0.95, 5.0)}
MAX_EPOCHS = 9


def _make_trainable():
    # Built inside a function so cloudpickle ships it by value: Ray workers cannot import this test
    # module by name (pytest puts tests/ on sys.path only in the driver).
    quality, max_epochs = dict(QUALITY), MAX_EPOCHS

    def trainable(config: dict) -> None:
        from ray import tune

        acc, cost = quality[config["q"]]
        for epoch in range(1, max_epochs + 1):
            tune.report({"epoch": epoch, "acc": acc * epoch / max_epochs, "cost": cost * epoch})

    return trainable


@pytest.fixture
def ray_local():
    import logging

    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level=logging.ERROR)
    yield ray
    ray.shutdown()


@pytest.mark.integration
def test_ray_tune_stops_dominated_configs(ray_local, tmp_path: Path) -> None:
    from ray import tune

    sched = MultiObjectiveASHA(OBJECTIVES, RungSchedule.parse("3,eta=2", MAX_EPOCHS))
    tuner = tune.Tuner(
        _make_trainable(),
        param_space={"q": tune.grid_search(list(QUALITY))},
        tune_config=tune.TuneConfig(
            scheduler=sched, num_samples=1, max_concurrent_trials=1, reuse_actors=True
        ),
        run_config=tune.RunConfig(storage_path=str(tmp_path), name="moasha", verbose=0),
    )
    start = time.perf_counter()
    results = tuner.fit()
    elapsed = time.perf_counter() - start
    print(f"ray tune fit: {elapsed:.1f}s")
    assert not results.errors
    last_epoch = {r.config["q"]: r.metrics["epoch"] for r in results}
    assert last_epoch == {"A": 9, "B": 3, "C": 9, "D": 3, "E": 9}
    assert sorted(sched.stopped.values()) == [3, 3]


# --- Front promotion and budget shifting (defaults since the search benchmark) -----------------


def _plain(**kw) -> MultiObjectiveRungs:
    return MultiObjectiveRungs(
        OBJECTIVES, RungSchedule(rungs=(3,), max_epochs=9, eta=3), **kw
    )


def test_rank0_outside_quota_continues() -> None:
    # eta=3. "a" and "b" trade off (a: accurate, b: cheap); "c" is dominated by "a"; "d" lies
    # between a and b on the front.
    s = _plain()
    assert _at_rung(s, "a", acc=0.9, cost=10.0) == "continue"  # alone
    assert _at_rung(s, "b", acc=0.5, cost=2.0) == "continue"  # n=2, quota 1, but rank 0
    assert _at_rung(s, "c", acc=0.8, cost=12.0) == "stop"  # dominated by a: rank 1
    # Rank 0 in the middle of the front: crowding puts the extremes a and b first, so its
    # position is 2 while the quota is ceil(4/3) = 2; it continues because it is non-dominated.
    assert _at_rung(s, "d", acc=0.7, cost=5.0) == "continue"
    assert s.stopped == {"c": 3}
    # The same arrivals under the quota alone (promote_front=False): b and d stop.
    q = _plain(promote_front=False)
    got = [_at_rung(q, t, acc, cost) for t, acc, cost in
           [("a", 0.9, 10.0), ("b", 0.5, 2.0), ("c", 0.8, 12.0), ("d", 0.7, 5.0)]]
    assert got == ["continue", "stop", "stop", "stop"]


def test_dominated_still_stops_with_promote_front() -> None:
    s = _plain()
    assert _at_rung(s, "a", 0.9, 1.0) == "continue"
    # Each newcomer is dominated by a (rank >= 1) and sits last: position n-1 >= ceil(n/3).
    for i in range(5):
        assert _at_rung(s, f"w{i}", 0.8 - 0.1 * i, 2.0 + i) == "stop"
    assert sorted(s.stopped) == [f"w{i}" for i in range(5)]


def test_quota_grows_once_mature() -> None:
    s = _plain(promote_front=False)  # defaults: mature_at 0.5, mature_factor 2
    assert [s.quota(n) for n in (1, 2, 3, 4, 6, 7)] == [1, 1, 1, 2, 2, 3]
    s.set_progress(0.49)
    assert not s.mature and s.quota(4) == 2
    s.set_progress(0.5)
    assert s.mature
    assert [s.quota(n) for n in (1, 2, 3, 4, 6, 7)] == [1, 2, 2, 3, 4, 5]  # ceil(2n/3)
    s.set_progress(7.0)  # clipped
    assert s.progress == 1.0
    s.set_progress(float("nan"))  # ignored
    assert s.progress == 1.0
    never = _plain(mature_at=None)
    never.set_progress(1.0)
    assert not never.mature and never.quota(4) == 2
    all_go = _plain(mature_factor=3.0)  # no stopping at all once mature (eta 3)
    all_go.set_progress(0.8)
    assert [all_go.quota(n) for n in (1, 2, 5)] == [1, 2, 5]


def test_mature_decisions_on_hand_made_rung() -> None:
    # A line of dominance (each newcomer worse than all before): position n-1, never rank 0.
    arrivals = [(f"t{i}", 0.9 - 0.1 * i, 1.0 + i) for i in range(4)]
    early, late = _plain(), _plain()
    late.set_progress(0.6)
    assert [_at_rung(early, *a) for a in arrivals] == ["continue", "stop", "stop", "stop"]
    # Mature: quota ceil(2n/3) = 1, 2, 2, 3 -> positions 0, 1, 2, 3 -> C, C, S, S.
    assert [_at_rung(late, *a) for a in arrivals] == ["continue", "continue", "stop", "stop"]


@pytest.mark.parametrize(
    ("kw", "match"),
    [({"mature_at": 1.5}, "mature_at must be in"), ({"mature_factor": 0.5}, "mature_factor")],
)
def test_bad_settings(kw: dict, match: str) -> None:
    with pytest.raises(StudyError, match=match):
        _plain(**kw)


@pytest.mark.parametrize(
    ("eta", "max_epochs", "rungs"),
    [(3, 10, (1, 3, 9)), (3, 8, (1, 3)), (3, 30, (3, 9, 27)), (3, 100, (11, 33, 99)),
     (2, 10, (2, 4, 8)), (3, 1, ())],
)
def test_default_schedule(eta: int, max_epochs: int, rungs: tuple[int, ...]) -> None:
    assert RungSchedule.default(eta, max_epochs).rungs == rungs


def test_adapter_passes_options_and_progress(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    sched = _asha(state_path=path, promote_front=False, mature_at=0.25)
    assert sched.rungs.promote_front is False and sched.rungs.mature_at == 0.25
    sched.set_progress(0.3)
    assert sched.rungs.mature
    sched.on_trial_result(None, _FakeTrial("a"), {"epoch": 3, "acc": 0.9, "cost": 1.0})
    sched.restore(str(path))  # the options and the progress survive a restore
    assert sched.rungs.promote_front is False and sched.rungs.mature
    assert _asha(state_path=path, mature_at=0.25).rungs.rung_table() == sched.rungs.rung_table()
