"""Tests for autotune.tracking against a real SQLite store and a real MLflow server."""

from __future__ import annotations

import json
import math
import socket
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from autotune.errors import TrackingError
from autotune.tracking import Recorder, TrialRecord, list_studies, redact_uri, resolve_tracking_uri
from tests.test_mlflow_server import MlflowServer


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> str:
    # One database for the module: creating MLflow's tables costs ~1.5 s each time.
    return resolve_tracking_uri(None, tmp_path_factory.mktemp("home"))


def rec(n: int, status: str = "finished", epochs: int = 3, acc: float | None = None,
        **kw) -> TrialRecord:
    acc = 0.5 + n / 100 if acc is None else acc
    curves = [{"epoch": e, "acc": acc * e / epochs, "loss": 1.0 / e} for e in range(1, epochs + 1)]
    return TrialRecord(n, status, {"optim.lr": 0.01 * (n + 1), "optim.name": "adam"},
                       {"acc": acc, "cost/time_s": 10.0 - n}, curves, started_at=1000.0 + n,
                       ended_at=1010.0 + n, **kw)


def children(uri: str, study: str) -> dict[int, object]:
    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name(f"autotune/{study}")
    runs = client.search_runs([exp.experiment_id], "tags.`autotune.role` = 'trial'")
    numbers = [int(r.data.tags["autotune.trial_number"]) for r in runs]
    assert len(numbers) == len(set(numbers)), f"duplicate child runs: {sorted(numbers)}"
    return {n: r for n, r in zip(numbers, runs, strict=True)}


def parent(uri: str, study: str):
    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name(f"autotune/{study}")
    runs = client.search_runs([exp.experiment_id], "tags.`autotune.role` = 'study'")
    assert len(runs) == 1
    return runs[0]


def test_resolve_tracking_uri(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert resolve_tracking_uri(None, tmp_path) == f"sqlite:///{tmp_path.resolve()}/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://env:5000")
    assert resolve_tracking_uri(None, tmp_path) == "http://env:5000"
    assert resolve_tracking_uri("http://flag:5000", tmp_path) == "http://flag:5000"


@pytest.mark.parametrize("uri, expected", [
    ("https://alice:s3cret@host:5000/path", "https://***@host:5000/path"),
    ("http://tok@host", "http://***@host"),
    ("https://host/x?access_token=abc&experiment=3", "https://host/x?access_token=***&experiment=3"),
    ("sqlite:////home/me/mlflow.db", "sqlite:////home/me/mlflow.db"),
    ("databricks://profile", "databricks://profile"),
])
def test_redact_uri(uri: str, expected: str) -> None:
    assert redact_uri(uri) == expected


def test_parent_and_children(store: str, tmp_path: Path) -> None:
    r = Recorder(store, "basic", tmp_path / "spool")
    r.start_study({"model": "mlp.py", "budget": 5}, {"autotune.version": "0.1.0"})
    for n in range(4):
        r.log_trial(rec(n))
    r.log_trial(rec(4, "failed", epochs=1, error="RuntimeError: boom\n" * 2000))
    r.log_trial(rec(5, "stopped", stopped_at_epoch=2, ray_trial_id="abc_00005"))
    r.end_study()
    assert r.pending() == 0

    top = parent(store, "basic")
    assert top.data.tags["autotune.study"] == "basic"
    assert top.data.params == {"model": "mlp.py", "budget": "5"}
    assert top.info.status == "FINISHED"
    kids = children(store, "basic")
    assert sorted(kids) == list(range(6))
    for n, run in kids.items():
        assert run.data.tags["mlflow.parentRunId"] == top.info.run_id
        assert run.info.run_name == f"trial-{n}"
        assert run.data.metrics["acc"] == pytest.approx(0.5 + n / 100)
        assert run.data.params["optim.lr"] == str(0.01 * (n + 1))
    assert kids[4].info.status == "FAILED" and kids[5].info.status == "FINISHED"
    assert kids[4].data.tags["autotune.status"] == "failed"
    assert len(kids[4].data.tags["autotune.error"]) == 8000  # truncated to MLflow's limit
    assert kids[5].data.tags["autotune.stopped_at_epoch"] == "2"
    assert kids[5].data.tags["autotune.ray_trial_id"] == "abc_00005"
    assert "autotune.error" not in kids[0].data.tags
    assert kids[0].info.start_time == 1_000_000 and kids[0].info.end_time == 1_010_000
    # A resumed study reuses its parent run and marks it running again.
    again = Recorder(store, "basic", tmp_path / "spool")
    again.start_study({"model": "mlp.py", "budget": 5}, {})
    assert parent(store, "basic").info.status == "RUNNING"
    assert list_studies(store) and {"name": "basic", "trials": 6, "front": 0}.items() <= next(
        s for s in list_studies(store) if s["name"] == "basic").items()


def test_curves_are_steps_and_relog_is_idempotent(store: str, tmp_path: Path) -> None:
    r = Recorder(store, "idem", tmp_path / "spool")
    r.start_study({}, {})
    r.log_trial(rec(7, epochs=5))
    r.log_trial(rec(7, epochs=5))  # the driver logs the same trial again
    Recorder(store, "idem", tmp_path / "other").log_trial(rec(7, epochs=5))  # a resumed process
    kids = children(store, "idem")
    assert list(kids) == [7]
    client = MlflowClient(tracking_uri=store)
    hist = client.get_metric_history(kids[7].info.run_id, "loss")
    assert sorted(m.step for m in hist) == [1, 2, 3, 4, 5]
    acc = client.get_metric_history(kids[7].info.run_id, "acc")
    # The final value is the curve's last point: not logged a second time at step 5.
    assert sorted(m.step for m in acc) == [1, 2, 3, 4, 5]
    assert kids[7].data.metrics["acc"] == pytest.approx(0.57)
    assert [m.step for m in client.get_metric_history(kids[7].info.run_id, "cost/time_s")] == [5]
    # A final value that differs from the curve's end (measured after training) is the latest.
    other = rec(8, epochs=3)
    other.metrics["acc"] = 0.9
    r.log_trial(other)
    kid8 = children(store, "idem")[8]
    assert sorted(m.step for m in client.get_metric_history(kid8.info.run_id, "acc")) == [1, 2, 3, 3]
    assert kid8.data.metrics["acc"] == pytest.approx(0.9)
    # An update may change the status (a trial resumed after a crash finishes later).
    r.log_trial(rec(7, "diverged", epochs=5, acc=math.nan, error="loss is NaN"))
    kid = children(store, "idem")[7]
    assert kid.info.status == "FAILED" and kid.data.tags["autotune.error"] == "loss is NaN"


def test_many_params_batched_and_truncated(store: str, tmp_path: Path) -> None:
    r = Recorder(store, "wide", tmp_path / "spool")
    params = {f"p{i:03d}": i for i in range(250)} | {"long": "x" * 10_000, "bad key!": 1}
    r.start_study(params, {})
    r.log_trial(TrialRecord(0, "finished", params, {f"m{i}": float(i) for i in range(1500)}, []))
    for run in (parent(store, "wide"), children(store, "wide")[0]):
        assert len(run.data.params) == 252
        assert len(run.data.params["long"]) == 6000
        assert run.data.params["bad key_"] == "1"
    assert len(children(store, "wide")[0].data.metrics) == 1500


def test_set_front_follows_the_front(store: str, tmp_path: Path) -> None:
    r = Recorder(store, "front", tmp_path / "spool")
    r.start_study({}, {})
    for n in range(4):
        r.log_trial(rec(n))
    r.set_front({0: 0, 1: 0, 2: 1, 3: 2})
    tags = {n: run.data.tags for n, run in children(store, "front").items()}
    assert [tags[n]["autotune.pareto"] for n in range(4)] == ["true", "true", "false", "false"]
    assert [tags[n]["autotune.pareto_rank"] for n in range(4)] == ["0", "0", "1", "2"]
    r.log_trial(rec(4, "failed"))
    r.set_front({0: 1, 1: 0, 3: 0})  # 0 leaves the front, 3 joins it, 2 drops out of the ranking
    tags = {n: run.data.tags for n, run in children(store, "front").items()}
    assert [tags[n]["autotune.pareto"] for n in range(5)] == [
        "false", "true", "false", "true", "false"]
    assert tags[0]["autotune.pareto_rank"] == "1" and "autotune.pareto_rank" not in tags[2]
    front = next(s for s in list_studies(store) if s["name"] == "front")
    assert front["trials"] == 5 and front["front"] == 2


def test_a_backlog_applies_only_the_last_front_snapshot(store: str, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """Front ops that pile up (the sender is behind) are each a whole snapshot: only the last of
    a study's is applied, and the tags end as if every one had been."""
    r = Recorder(store, "backlog", tmp_path / "spool")
    applied: list[list] = []
    do_front = r._do_front
    monkeypatch.setattr(r, "_do_front", lambda op: (applied.append(op["ranks"]), do_front(op)))
    r._retry_at = time.monotonic() + 3600  # as during an outage: appends only, no sending
    r.start_study({}, {})
    for n in range(6):
        r.log_trial(rec(n))
        r.set_front({m: 0 if m == n else 1 for m in range(n + 1)})  # each trial takes the front
    r.log_trial(rec(6))
    assert r.pending() == 1 + 6 + 6 + 1
    assert r.flush(timeout_s=30)
    assert applied == [[[m, 0 if m == 5 else 1] for m in range(6)]]
    tags = {n: run.data.tags for n, run in children(store, "backlog").items()}
    assert [tags[n]["autotune.pareto"] for n in range(7)] == ["false"] * 5 + ["true", "false"]
    assert [tags[n].get("autotune.pareto_rank") for n in range(7)] == ["1"] * 5 + ["0", None]


def test_live_front_updates_tag_only_who_joins_or_leaves(store: str, tmp_path: Path) -> None:
    """A partial update (during the study) re-tags only the trials whose membership changed; the
    ranks of trials that stay dominated are refreshed by the next full update (the study's end),
    which a later partial update does not replace in a backlog."""
    r = Recorder(store, "partial", tmp_path / "spool")
    r.start_study({}, {})
    for n in range(4):
        r.log_trial(rec(n))
    r.set_front({0: 0, 1: 1, 2: 2, 3: 3})
    r.set_front({0: 1, 1: 2, 2: 3, 3: 0}, full=False)  # 3 joins, 0 leaves; 1 and 2 stay dominated
    tags = {n: run.data.tags for n, run in children(store, "partial").items()}
    assert [tags[n]["autotune.pareto"] for n in range(4)] == ["false", "false", "false", "true"]
    assert [tags[n]["autotune.pareto_rank"] for n in range(4)] == ["1", "1", "2", "0"]  # 1, 2 stale
    r._retry_at = time.monotonic() + 3600  # a backlog: full, then partial
    r.set_front({0: 1, 1: 2, 2: 3, 3: 0})
    r.set_front({0: 1, 1: 2, 2: 3, 3: 0}, full=False)
    assert r.flush(timeout_s=30)
    tags = {n: run.data.tags for n, run in children(store, "partial").items()}
    assert [tags[n]["autotune.pareto_rank"] for n in range(4)] == ["1", "2", "3", "0"]


def test_study_summary_metrics_and_artifacts(store: str, tmp_path: Path) -> None:
    r = Recorder(store, "summary", tmp_path / "spool")
    r.start_study({}, {})
    csv = tmp_path / "pareto.csv"
    for step, hv in ((3, 0.4), (5, 0.6)):
        csv.write_text(f"hv\n{hv}\n")
        r.log_study_summary({"hypervolume": hv}, {"pareto.csv": csv}, step=step)
    csv.unlink()
    top = parent(store, "summary")
    client = MlflowClient(tracking_uri=store)
    hist = client.get_metric_history(top.info.run_id, "hypervolume")
    assert [(m.step, m.value) for m in sorted(hist, key=lambda m: m.step)] == [(3, 0.4), (5, 0.6)]
    assert [f.path for f in client.list_artifacts(top.info.run_id)] == ["pareto.csv"]
    got = client.download_artifacts(top.info.run_id, "pareto.csv", str(tmp_path))
    assert Path(got).read_text() == "hv\n0.6\n"
    assert "mlartifacts" in top.info.artifact_uri  # never ./mlruns
    assert not any((tmp_path / "spool" / "blobs").iterdir())  # sent copies are removed


def _dead_uri() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}"  # nothing listens there


def test_unreachable_store_spools_then_a_new_process_flushes(store: str, tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    down = Recorder(_dead_uri(), "outage", spool)
    t0 = time.monotonic()
    down.start_study({"a": 1}, {})
    for n in range(3):
        down.log_trial(rec(n))
    down.set_front({0: 0, 1: 1, 2: 0})
    (tmp_path / "p.html").write_text("<html/>")
    down.log_study_summary({"hypervolume": 0.3}, {"pareto.html": tmp_path / "p.html"}, step=3)
    assert time.monotonic() - t0 < 3.0
    assert down.pending() == 6 and not down.flush(timeout_s=0.2)
    snapshot = (spool / "pending.jsonl").read_text()

    up = Recorder(store, "outage", spool)  # the next command, same spool: sends the backlog
    assert up.pending() == 0
    kids = children(store, "outage")
    assert sorted(kids) == [0, 1, 2] and kids[2].data.tags["autotune.pareto"] == "true"
    # A crash after sending but before the spool was rewritten replays everything: no duplicates.
    (spool / "pending.jsonl").write_text(snapshot + "{torn wri")
    assert Recorder(store, "outage", spool).flush()
    kids = children(store, "outage")
    assert sorted(kids) == [0, 1, 2]
    client = MlflowClient(tracking_uri=store)
    assert len(client.get_metric_history(kids[0].info.run_id, "loss")) == 3
    assert "{torn wri" in (spool / "failed.jsonl").read_text()  # kept aside, not lost


def test_records_appended_during_a_drain_wait_for_nothing_and_are_sent_by_the_next(
        store: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import threading

    spool = tmp_path / "spool"
    r = Recorder(store, "during", spool)
    r._background = True  # as in a study: appends only, the sender drains
    r.log_trial(rec(0))
    inside, release = threading.Event(), threading.Event()
    apply = Recorder._do_trial

    def slow(self: Recorder, op: dict) -> None:  # the sender, descheduled mid-drain
        inside.set()
        release.wait(10)
        apply(self, op)

    monkeypatch.setattr(Recorder, "_do_trial", slow)
    drain = threading.Thread(target=r._drain, args=(time.monotonic() + 30,))
    drain.start()
    assert inside.wait(10)
    t0 = time.monotonic()
    r.log_trial(rec(1))
    r.log_trial(rec(2))
    assert time.monotonic() - t0 < 1.0  # the study never waits on a drain
    release.set()
    drain.join(10)
    assert r.pending() == 2 and sorted(children(store, "during")) == [0]
    assert r._drain(time.monotonic() + 30) == 0
    assert sorted(children(store, "during")) == [0, 1, 2]
    assert (spool / "pending.jsonl").read_bytes() == b""  # all sent: emptied


def test_a_write_torn_by_a_crash_keeps_the_next_record_whole(store: str, tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    spool.mkdir()
    (spool / "pending.jsonl").write_text('{"id": "x", "kind": "tri')  # the crash, mid-append
    r = Recorder(store, "torn", spool)
    r.log_trial(rec(0))
    assert sorted(children(store, "torn")) == [0]
    aside = [json.loads(line) for line in (spool / "failed.jsonl").read_text().splitlines()]
    assert [a["raw"] for a in aside] == ['{"id": "x", "kind": "tri']  # kept aside, not lost
    assert r.pending() == 0 and (spool / "pending.jsonl").read_bytes() == b""


def test_a_sent_offset_off_a_line_start_replays_instead_of_skipping(store: str, tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    r = Recorder(store, "stale", spool)
    r._background = True
    r.log_trial(rec(0))
    for stale in ("99999", "7"):  # the spool emptied or replaced by hand; mid-line
        (spool / "pending.sent").write_text(stale)
        assert r.pending() == 1
    assert r._drain(time.monotonic() + 30) == 0
    assert sorted(children(store, "stale")) == [0]


def test_bad_input_is_refused(store: str, tmp_path: Path) -> None:
    with pytest.raises(TrackingError, match="cannot name"):
        Recorder(store, "no'quotes", tmp_path / "spool")
    r = Recorder(store, "bad", tmp_path / "spool")
    with pytest.raises(TrackingError, match="must be one of"):
        r.log_trial(rec(0, "pruned"))


# ---- a real MLflow server killed mid-study ----


@pytest.fixture
def server(tmp_path: Path):
    srv = MlflowServer(tmp_path)
    try:
        yield srv
    finally:
        srv.kill()


@pytest.mark.integration
def test_server_killed_mid_study(server: MlflowServer, tmp_path: Path) -> None:
    server.start()
    r = Recorder(server.uri, "live", tmp_path / "spool")
    r.start_study({"model": "mlp.py"}, {})
    for n in range(3):
        r.log_trial(rec(n))
    assert r.pending() == 0

    server.kill()
    (tmp_path / "pareto.png").write_bytes(b"\x89PNG fake")
    slowest = 0.0
    for call in [lambda n=n: r.log_trial(rec(n)) for n in range(3, 7)] + [
            lambda: r.set_front({n: int(n % 2 == 1) for n in range(7)}),
            lambda: r.log_study_summary({"hypervolume": 0.5}, {"pareto.png":
                                                               tmp_path / "pareto.png"}, step=7)]:
        t0 = time.monotonic()
        call()  # must neither raise nor block the study
        slowest = max(slowest, time.monotonic() - t0)
    assert slowest < 3.0
    assert r.pending() == 6

    server.start()  # same port, same database
    assert r.flush(timeout_s=20)
    r.end_study()
    assert r.pending() == 0
    kids = children(server.uri, "live")
    assert sorted(kids) == list(range(7))
    for n, run in kids.items():
        assert run.data.metrics["acc"] == pytest.approx(0.5 + n / 100)
        assert run.data.tags["autotune.pareto"] == ("false" if n % 2 else "true")
    top = parent(server.uri, "live")
    assert top.info.status == "FINISHED" and top.data.metrics["hypervolume"] == 0.5
    client = MlflowClient(tracking_uri=server.uri)
    assert [f.path for f in client.list_artifacts(top.info.run_id)] == ["pareto.png"]
    assert len(client.get_metric_history(kids[0].info.run_id, "loss")) == 3
    [study] = list_studies(server.uri)
    assert (study["name"], study["trials"], study["front"]) == ("live", 7, 4)


def test_a_summary_picture_is_drawn_from_its_spooled_data_and_a_bad_one_is_left_out(
        store: str, tmp_path: Path) -> None:
    """pareto.png is drawn where the summary is sent (the sender process at a study's end), from
    the spooled copy of pareto.csv; one that cannot be drawn does not hold the rest back."""
    r = Recorder(store, "drawn", tmp_path / "spool")
    r.start_study({}, {})
    csv = tmp_path / "pareto.csv"
    csv.write_text("trial,pareto_rank,on_front,baseline,accuracy,train_flops,policy\n"
                   "0,0,True,True,0.9,100.0,{}\n1,0,True,False,0.8,40.0,{}\n"
                   "2,1,False,False,0.7,60.0,{}\n")
    also = tmp_path / "study" / "pareto.png"
    also.parent.mkdir()
    how = {"data": "pareto.csv", "x": "train_flops", "y": "accuracy", "title": "t"}
    r.log_study_summary({"front_size": 2.0}, {"pareto.csv": csv},
                        drawn={"pareto.png": {**how, "also_to": str(also)},
                               "bad.png": {**how, "x": "no_such_metric"},
                               "orphan.png": {**how, "data": "not_spooled.csv"}})
    assert r.pending() == 0
    top = parent(store, "drawn")
    client = MlflowClient(tracking_uri=store)
    assert sorted(f.path for f in client.list_artifacts(top.info.run_id)) == ["pareto.csv", "pareto.png"]
    got = Path(client.download_artifacts(top.info.run_id, "pareto.png", str(tmp_path / "dl")))
    assert got.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
    assert also.read_bytes() == got.read_bytes()


def test_the_sender_process_applies_what_the_study_spools(store: str, tmp_path: Path) -> None:
    """background=True: a separate process sends while the study goes on appending; nothing
    appended during one of its drains is lost, and the front tags it keeps in memory are right."""
    r = Recorder(store, "sender", tmp_path / "spool", background=True)
    assert r._sender is not None and r._sender.poll() is None
    r.start_study({"model": "m.py"}, {})
    for n in range(30):
        r.log_trial(rec(n))
        r.set_front({m: 0 if m in (n, n - 1) else 1 for m in range(n + 1)})
        time.sleep(0.02)
    deadline = time.monotonic() + 60
    while r.pending() and time.monotonic() < deadline:  # no flush: the sender alone sends
        time.sleep(0.2)
    assert r.pending() == 0
    r.end_study()
    assert r.flush(timeout_s=30)
    sender = r._sender
    r.close()
    assert sender.poll() is not None  # closing stdin ended it
    kids = children(store, "sender")
    assert sorted(kids) == list(range(30))
    assert {n for n, run in kids.items() if run.data.tags["autotune.pareto"] == "true"} == {28, 29}
    assert kids[0].data.tags["autotune.pareto_rank"] == "1"
    assert parent(store, "sender").info.status == "FINISHED"


def test_a_standby_sender_is_taken_by_the_study_and_sends_its_records(store: str,
                                                                       tmp_path: Path) -> None:
    """run_search starts the sender before its study is known (it imports MLflow beside the
    study's own imports); the study's Recorder hands it the store and the spool."""
    from autotune import tracking

    tracking.start_standby_sender()
    standby = tracking._standby
    assert standby is not None
    r = Recorder(store, "standby", tmp_path / "spool", background=True)
    assert r._sender is standby and tracking._standby is None
    r.start_study({"model": "m.py"}, {})
    for n in range(3):
        r.log_trial(rec(n))
    r.end_study()
    assert r.send_all(window_s=30) == 0
    r.close()
    assert standby.poll() is not None
    assert sorted(children(store, "standby")) == [0, 1, 2]
    assert parent(store, "standby").info.status == "FINISHED"


def test_a_standby_sender_that_died_is_replaced_and_one_no_study_took_is_ended(
        store: str, tmp_path: Path) -> None:
    from autotune import tracking

    tracking.start_standby_sender()
    r = Recorder(store, "standby-died", tmp_path / "spool", background=True)
    dead = r._sender
    assert dead is not None and r._adopted
    dead.kill()  # after the hand-over, before it said whether the store opened
    r.ready()  # a new sender, started the usual way, opened it
    assert r._sender is not dead and not r._adopted
    r.log_trial(rec(0))
    assert r.send_all(window_s=30) == 0
    r.close()
    assert sorted(children(store, "standby-died")) == [0]

    tracking.start_standby_sender()
    unused = tracking._standby
    assert unused is not None
    tracking.discard_standby_sender()  # the command failed before its study began
    assert unused.poll() is not None and tracking._standby is None


def test_new_sqlite_stores_are_copies_of_one_migrated_schema(tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """The first new store builds MLflow's migrated schema once into the cache; later stores are
    copies of it, each with its own Default experiment and artifact root, identical in schema to a
    store MLflow builds itself; a broken template is dropped and the store built the long way."""
    import sqlite3

    from autotune.tracking import _client, _schema_template

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))

    def schema(db: Path) -> list[tuple]:
        # Line by line, sorted: MLflow itself orders a table's constraints differently from one
        # build of the same schema to the next.
        with sqlite3.connect(db) as con:
            rows = con.execute("select type, name, sql from sqlite_master "
                               "where name not like 'sqlite_%'").fetchall()
        return sorted((t, n, tuple(sorted(ln.strip().rstrip(",") for ln in (sql or "").splitlines())))
                      for t, n, sql in rows)

    plain = tmp_path / "plain" / "mlflow.db"
    plain.parent.mkdir()
    MlflowClient(tracking_uri=f"sqlite:///{plain}")  # MLflow's own migrations, no autotune
    uris = [f"sqlite:///{tmp_path / name / 'mlflow.db'}" for name in ("a", "b")]
    for uri in uris:
        client = _client(uri)
        [default] = client.search_experiments()
        assert default.name == "Default"
        exp = client.create_experiment("autotune/x")
        client.create_run(exp)
    template = _schema_template()
    assert template is not None and template.parent == tmp_path / "cache" / "autotune"
    with sqlite3.connect(template) as con:  # no experiments: each store adds its own
        assert con.execute("select count(*) from experiments").fetchone() == (0,)
    for name in ("a", "b"):
        assert schema(tmp_path / name / "mlflow.db") == schema(plain)
    template.write_bytes(b"not a database")
    client = _client(f"sqlite:///{tmp_path / 'c' / 'mlflow.db'}")
    assert [e.name for e in client.search_experiments()] == ["Default"]
    assert schema(tmp_path / "c" / "mlflow.db") == schema(plain)


def test_the_append_lock_excludes_other_processes_and_threads(tmp_path: Path) -> None:
    """The spool's append lock (flock on a descriptor kept open) against another process taking
    it as the sender's _compact does, and against a second thread of the same process."""
    import subprocess
    import sys
    import threading

    from autotune.tracking import _AppendLock

    path = tmp_path / ".append.lock"
    try_lock = ("import fcntl, os, sys; fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT); "
                "fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)")
    lock = _AppendLock(path)
    with lock:
        held = subprocess.run([sys.executable, "-c", try_lock, str(path)], capture_output=True)
        assert held.returncode != 0 and b"BlockingIOError" in held.stderr
        other = threading.Thread(target=lambda: lock.__enter__() or lock.__exit__())
        other.start()
        other.join(0.3)
        assert other.is_alive()  # waits for this thread's hold
    other.join(5)
    assert not other.is_alive()
    assert subprocess.run([sys.executable, "-c", try_lock, str(path)]).returncode == 0
