"""End to end on a real local Ray, real Optuna storage and a real MLflow store: a study, its resume after kill -9."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from autotune.study import Study
from tests.conftest import STUDIES

pytestmark = pytest.mark.integration
DIGITS = str(STUDIES / "digits" / "model.py")
NOOP = str(Path(__file__).resolve().parents[1] / "scripts" / "bench_models" / "noop" / "model.py")


def autotune(*args: str, home: Path, check: bool = True, **kw) -> subprocess.CompletedProcess:
    env = {**os.environ, "AUTOTUNE_HOME": str(home), "COLUMNS": "200"}
    proc = subprocess.run([sys.executable, "-m", "autotune", *args], env=env, text=True,
                          capture_output=True, timeout=600, **kw)
    if check and proc.returncode != 0:
        raise AssertionError(f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}")
    return proc


def children(home: Path, name: str) -> list:
    client = MlflowClient(f"sqlite:///{home / 'mlflow.db'}")
    exp = client.get_experiment_by_name(f"autotune/{name}")
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    return [r for r in runs if "autotune.trial_number" in r.data.tags]


def test_small_study_records_every_trial_front_and_baseline(home: Path) -> None:
    out = autotune("search", DIGITS, "--trials", "10", "--epochs", "6", "--rungs", "2",
                   "--name", "small", home=home)
    assert "Pareto front of small" in out.stdout and "(baseline)" in out.stdout
    views = Study("small", home).trial_views()
    assert len(views) == 10
    assert sum(v.baseline for v in views) == 1
    statuses = {v.status for v in views}
    assert "finished" in statuses and statuses <= {"finished", "stopped", "failed", "diverged"}
    assert any(v.status == "stopped" for v in views), "early stopping stopped nothing"
    runs = children(home, "small")
    assert sorted(int(r.data.tags["autotune.trial_number"]) for r in runs) == sorted(v.number for v in views)
    tagged = {int(r.data.tags["autotune.trial_number"]) for r in runs
              if r.data.tags.get("autotune.pareto") == "true"}
    from autotune.objectives import Objective
    from autotune.results import compute_front

    front = compute_front(views, [Objective("accuracy", "max"), Objective("train_time_s", "min")])
    assert tagged == {t.number for t in front.members}
    assert all(t.status == "finished" for t in front.members)
    # The front's files on the parent run and in the study folder; pareto.png is drawn by the
    # MLflow sender process from the spooled pareto.csv (tracking.Recorder._draw).
    client = MlflowClient(f"sqlite:///{home / 'mlflow.db'}")
    [top] = client.search_runs([client.get_experiment_by_name("autotune/small").experiment_id],
                               "tags.`autotune.role` = 'study'")
    assert {"pareto.csv", "pareto.html", "pareto.png"} <= {a.path for a in client.list_artifacts(top.info.run_id)}
    assert (home / "small" / "pareto" / "pareto.png").read_bytes().startswith(b"\x89PNG")
    # Ray's CSV and JSON result logs are written, its TensorBoard files are not (runner._RAY_FILE_LOGGERS)
    ray_dir = home / "small" / "ray"
    assert len(list(ray_dir.rglob("result.json"))) == 10 and len(list(ray_dir.rglob("progress.csv"))) == 10
    assert not list(ray_dir.rglob("events.out.tfevents*"))
    # a second run of the same command says the study is complete and prints the front
    again = autotune("search", DIGITS, "--trials", "10", "--epochs", "6", "--rungs", "2",
                     "--name", "small", home=home)
    assert "is complete" in again.stdout


def test_trials_shorter_than_a_workers_start_up_keep_both_trial_actors_busy(home: Path) -> None:
    """With Tune's FIFO choice, a study of very short trials could stay at one actor running every
    trial beside a worker started and killed over and over (scheduler.MultiObjectiveASHA.
    choose_trial_to_run): each trial's result.json names the worker process that ran it. Two or
    more cores give two or more trial slots (CI has 2)."""
    autotune("search", NOOP, "--trials", "40", "--cpus-per-trial", "1", "--no-tracking",
             "--name", "short", home=home)
    pids = {json.loads(line)["pid"] for f in (home / "short" / "ray").rglob("result.json")
            for line in f.read_text().splitlines() if line.strip()}
    assert len(pids) >= 2, f"every trial ran on one worker process: {sorted(pids)}"


def test_the_study_takes_the_sender_started_before_its_imports(home: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """run_search starts the MLflow sender first (tracking.start_standby_sender) and the study's
    Recorder hands it the store: no second sender is started, and it records every trial."""
    import io

    from rich.console import Console

    from autotune import tracking
    from autotune.runner import SearchOptions, run_search

    spawned: list[str] = []
    spawn = tracking.Recorder._spawn_sender
    monkeypatch.setattr(tracking.Recorder, "_spawn_sender",
                        lambda self: spawned.append(self.study) or spawn(self))
    monkeypatch.setenv("AUTOTUNE_HOME", str(home))
    out = run_search(SearchOptions(model_file=Path(NOOP), trials=4, name="standby", cpus_per_trial=1.0,
                                   tracking_uri=f"sqlite:///{home / 'mlflow.db'}"),
                     Console(file=io.StringIO()))
    assert out.complete and spawned == [] and tracking._standby is None
    assert len(children(home, "standby")) == 4


def test_kill_9_of_the_driver_then_the_same_command_finishes_without_duplicates(home: Path) -> None:
    args = ["search", DIGITS, "--trials", "8", "--epochs", "4", "--no-early-stop", "--name", "k"]
    env = {**os.environ, "AUTOTUNE_HOME": str(home)}
    proc = subprocess.Popen([sys.executable, "-m", "autotune", *args], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    study = Study("k", home)
    deadline = time.time() + 300
    try:
        while time.time() < deadline:
            time.sleep(1)
            if (study.dir / "optuna.db").exists():
                try:
                    if len(study.trial_views()) >= 3:
                        break
                except Exception:
                    continue  # the storage is being created
        else:
            pytest.fail("the study never got 3 trials done")
    finally:
        proc.send_signal(signal.SIGKILL)  # the driver only, mid-study
        proc.wait()
    done_before = len(study.trial_views())
    assert done_before < 8
    out = autotune(*args, home=home)
    assert "Resuming" in out.stdout or "interrupted" in out.stdout.lower()
    views = Study("k", home).trial_views()
    assert len(views) == 8
    assert len({v.number for v in views}) == 8
    assert sum(v.baseline for v in views) == 1
    numbers = sorted(int(r.data.tags["autotune.trial_number"]) for r in children(home, "k"))
    assert numbers == sorted(v.number for v in views), "MLflow must hold each trial exactly once"


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--trials", "-1"], "--trials must be at least 1"),
        (["--objective", "nonsense:max"], "is not measured"),
        (["--objective", "accuracy:up"], "direction must be"),
        (["--constraint", "latency < fast"], "is not of the form"),
        (["--gpus-per-trial", "1"], "GPUs"),
        (["--sampler", "bogus"], "--sampler 'bogus' is unknown"),
        (["--time-budget", "soon"], "not a positive duration"),
        (["--rungs", "3,2"], "rung"),
    ],
)
def test_bad_search_flags_exit_2_with_one_paragraph_and_no_traceback(home: Path, args: list[str],
                                                                     needle: str) -> None:
    out = autotune("search", DIGITS, "--epochs", "4", *args, home=home, check=False)
    assert out.returncode == 2, out.stdout + out.stderr
    assert needle in out.stderr
    assert "Traceback" not in out.stderr + out.stdout
