"""Reliability with real processes and signals (issue 7): a driver killed with SIGKILL again and
again, Ctrl-C, trial faults (exception, NaN, out of memory, hang, crashed worker), a study where
everything fails, a tracking server that goes away, and two studies at once."""

from __future__ import annotations

import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from autotune.objectives import Objective
from autotune.results import compute_front
from autotune.study import Study
from tests.conftest import STUDIES
from tests.test_mlflow_server import MlflowServer

pytestmark = pytest.mark.integration
DIGITS = str(STUDIES / "digits" / "model.py")
FIXTURES = Path(__file__).resolve().parent / "fixtures"
OBJECTIVES = [Objective("accuracy", "max"), Objective("train_time_s", "min")]


def _env(home: Path) -> dict[str, str]:
    return {**os.environ, "AUTOTUNE_HOME": str(home), "COLUMNS": "200"}


def autotune(*args: str, home: Path, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "autotune", *args], env=_env(home), text=True,
                          capture_output=True, timeout=600)
    if check and proc.returncode != 0:
        raise AssertionError(f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}")
    return proc


def start(*args: str, home: Path, log: Path | None = None) -> subprocess.Popen:
    """A driver in its own session, so whatever Ray it starts can be found (and ended) later."""
    out = open(log, "w") if log else subprocess.DEVNULL  # noqa: SIM115 - owned by the process
    return subprocess.Popen([sys.executable, "-m", "autotune", *args], env=_env(home),
                            stdout=out, stderr=subprocess.STDOUT if log else subprocess.DEVNULL,
                            start_new_session=True, text=True)


def end_session(pid: int) -> None:
    """SIGKILL what is left of a killed driver's session (Ray's helpers): processes we started."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if int(fields[3]) == pid:  # field 6 of /proc/PID/stat: the session id
            try:
                os.kill(int(entry.name), signal.SIGKILL)
            except OSError:
                pass


def wait_for(cond: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            if cond():
                return
        except Exception:  # the storage is being created or written
            pass
        time.sleep(0.5)
    pytest.fail(f"timed out waiting for {what}")


def faulty(tmp_path: Path, faults: str, always: bool = False) -> Path:
    """A copy of tests/fixtures/faulty_model.py with its own fault list."""
    folder = tmp_path / "faulty"
    folder.mkdir(exist_ok=True)
    shutil.copy(FIXTURES / "faulty_model.py", folder / "model.py")
    shutil.copy(FIXTURES / "faulty.yaml", folder / "faulty.yaml")
    (folder / "faults.txt").write_text(faults)
    if always:
        (folder / "always.txt").write_text("every model fails in training\n")
    return folder / "model.py"


def children(uri: str, name: str) -> dict[int, object]:
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(f"autotune/{name}")
    if exp is None:
        return {}
    runs = client.search_runs([exp.experiment_id], "tags.`autotune.role` = 'trial'",
                              max_results=1000)
    numbers = [int(r.data.tags["autotune.trial_number"]) for r in runs]
    assert len(numbers) == len(set(numbers)), f"recorded twice in MLflow: {sorted(numbers)}"
    return dict(zip(numbers, runs, strict=True))


def check_records(home: Path, name: str, trials: int, uri: str | None = None) -> list:
    """Each trial once in Optuna and once in MLflow (with metrics); MLflow's front is Optuna's."""
    views = Study(name, home).trial_views()
    assert len(views) == trials
    assert len({v.number for v in views}) == trials
    assert sum(v.baseline for v in views) == 1
    runs = children(uri or f"sqlite:///{home / 'mlflow.db'}", name)
    assert sorted(runs) == sorted(v.number for v in views)
    for v in views:
        if v.status == "finished":
            assert "accuracy" in runs[v.number].data.metrics, v.number
    tagged = {n for n, r in runs.items() if r.data.tags.get("autotune.pareto") == "true"}
    assert tagged == {t.number for t in compute_front(views, OBJECTIVES).members}
    return views


# ---- 1. the driver killed ----


def test_driver_killed_again_and_again_then_ctrl_c_then_it_completes(home: Path,
                                                                    tmp_path: Path) -> None:
    args = ["search", DIGITS, "--trials", "8", "--epochs", "3", "--no-early-stop", "--name", "k"]
    rng = random.Random(7)
    previous: int | None = None
    try:
        for i in range(5):
            proc = start(*args, home=home, log=tmp_path / f"kill{i}.log")
            if previous is not None:
                end_session(previous)  # the run above started beside the last one's leftovers
            time.sleep(rng.uniform(4, 15))
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            previous = proc.pid
        study = Study("k", home)
        proc = start(*args, home=home, log=tmp_path / "ctrl-c.log")
        end_session(previous)
        previous = proc.pid
        started = time.time()

        def a_trial_runs() -> bool:  # one this driver started (a killed one leaves RUNNING rows)
            from optuna.trial import TrialState

            if proc.poll() is not None:
                return True
            trials = study.optuna_study().get_trials(deepcopy=False, states=(TrialState.RUNNING,))
            return any(t.datetime_start.timestamp() > started for t in trials)

        wait_for(a_trial_runs, 300, "a running trial")
        if proc.poll() is None:
            t0 = time.time()
            proc.send_signal(signal.SIGINT)  # what Ctrl-C sends the driver
            code = proc.wait(timeout=60)
            elapsed = time.time() - t0
            text = (tmp_path / "ctrl-c.log").read_text()
            assert code == 130, text
            assert elapsed <= 10, f"Ctrl-C took {elapsed:.1f}s to stop the study\n{text}"
            assert "Resume with: autotune search" in " ".join(text.split()), text
            assert "Traceback" not in text
    finally:
        if previous is not None:
            end_session(previous)
    out = autotune(*args, home=home)
    assert "Traceback" not in out.stdout + out.stderr
    views = check_records(home, "k", 8)
    assert {v.status for v in views} <= {"finished", "failed", "diverged"}


# ---- 2. trial faults ----


def test_trial_faults_are_recorded_and_the_study_goes_on(home: Path, tmp_path: Path) -> None:
    model = faulty(tmp_path, "raise nan oom hang none")
    out = autotune("search", str(model), "--trials", "6", "--no-early-stop", "--name", "f",
                   "--trial-timeout", "15s", home=home)
    views = {v.number: v for v in check_records(home, "f", 6)}
    by_reason = {
        "raise": ("failed", "ValueError: width None is not supported"),
        "nan": ("diverged", "loss became nan"),
        "oom": ("failed", "out of memory"),
        "hang": ("failed", "timed out after 15s"),
    }
    runs = children(f"sqlite:///{home / 'mlflow.db'}", "f")
    summary = " ".join(out.stdout.split())
    for fault, (status, reason) in by_reason.items():
        hit = [v for v in views.values() if v.status == status and reason in (v.error or "")]
        assert len(hit) == 1, (fault, [(v.number, v.status, v.error) for v in views.values()])
        tags = runs[hit[0].number].data.tags
        assert tags["autotune.status"] == status and reason in tags["autotune.error"], fault
        assert f"trial {hit[0].number} {status}: " in summary, fault
    assert sum(v.status == "finished" for v in views.values()) == 2  # baseline + the last one
    assert "1 diverged, 3 failed, 2 finished" in summary


def test_a_crashed_worker_is_retried_max_failures_times(home: Path, tmp_path: Path) -> None:
    model = faulty(tmp_path, "crash")
    autotune("search", str(model), "--trials", "2", "--no-early-stop", "--name", "c",
             "--max-failures", "1", home=home)
    attempts = (model.parent / "crashes.log").read_text().split()
    assert len(attempts) == 2, attempts  # the first try and one retry
    views = check_records(home, "c", 2)
    [crashed] = [v for v in views if not v.baseline]
    assert crashed.status == "failed" and "crashed" in crashed.error


def test_a_study_where_every_trial_fails_stops_early(home: Path, tmp_path: Path) -> None:
    model = faulty(tmp_path, "none", always=True)
    out = autotune("search", str(model), "--trials", "30", "--no-early-stop", "--name", "bad",
                   home=home, check=False)
    assert out.returncode == 2, out.stdout + out.stderr
    err = " ".join(out.stderr.split())
    assert "stopped early: all" in err and "RuntimeError: boom" in err and "Fix:" in err
    assert "Traceback" not in out.stdout + out.stderr
    views = Study("bad", home).trial_views()
    assert 5 <= len(views) <= 8, len(views)
    assert all(v.status == "failed" for v in views)


# ---- 3. tracking outage (and credentials in the URI never shown) ----


def test_tracking_server_down_for_the_whole_study_then_the_next_command_flushes(
        home: Path, tmp_path: Path) -> None:
    # The server killed mid-study and back before the study ends is tested in
    # tests/test_mlflow_server.py::test_every_trial_once_after_the_outage; here it never comes back
    # while the study runs: the study still finishes and the next command delivers the records.
    server = MlflowServer(tmp_path)
    secret_uri = f"http://alice:s3cr3t-pw@127.0.0.1:{server.port}"
    model = faulty(tmp_path, "none")
    outputs = []
    try:
        args = ["search", str(model), "--trials", "3", "--no-early-stop", "--name", "gone",
                "--tracking-uri", secret_uri]
        first = autotune(*args, home=home)
        gone = Study("gone", home)
        assert len(gone.trial_views()) == 3
        assert (gone.spool_dir / "pending.jsonl").read_text().strip()
        server.start()
        again = autotune(*args, home=home)
        assert "is complete" in again.stdout
        outputs += [first.stdout + first.stderr, again.stdout + again.stderr]
        check_records(home, "gone", 3, server.uri)
        assert not (gone.spool_dir / "pending.jsonl").read_text().strip()

        # credentials inside the tracking URI: never printed, written or recorded
        for text in outputs:
            assert "s3cr3t" not in text
        for path in home.rglob("*"):
            if path.is_file() and path.name != "mlflow.db":
                assert b"s3cr3t" not in path.read_bytes(), path
        client = MlflowClient(server.uri)
        for name in ("gone",):
            exp = client.get_experiment_by_name(f"autotune/{name}")
            for run in client.search_runs([exp.experiment_id], max_results=1000):
                recorded = [*run.data.params.values(), *run.data.tags.values()]
                assert not any("s3cr3t" in str(v) for v in recorded), run.info.run_id
    finally:
        server.kill()


# ---- 4. concurrency ----


def test_two_studies_at_once_and_the_same_study_twice(home: Path, tmp_path: Path) -> None:
    model = faulty(tmp_path, "none")
    common = ["search", str(model), "--trials", "3", "--epochs", "20", "--no-early-stop"]
    procs = {key: start(*common, "--name", name, home=home, log=tmp_path / f"{key}.log")
             for key, name in (("a1", "a"), ("a2", "a"), ("b", "b"))}
    try:
        codes = {key: p.wait(timeout=400) for key, p in procs.items()}
    finally:
        for p in procs.values():
            if p.poll() is None:
                p.kill()
    logs = {key: (tmp_path / f"{key}.log").read_text() for key in procs}
    assert codes["b"] == 0, logs["b"]
    assert sorted([codes["a1"], codes["a2"]]) == [0, 2], logs
    loser = "a1" if codes["a1"] == 2 else "a2"
    text = " ".join(logs[loser].split())
    assert "is already being run by another autotune process" in text and "Traceback" not in text
    for name in ("a", "b"):
        check_records(home, name, 3)
    assert re.search(r"3 finished", logs["b"])
