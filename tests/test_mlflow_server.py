"""Issue 5 acceptance against a real `mlflow server`: a digits study records one parent and one
child per trial, the front tags match the printed front, the parent holds pareto.csv/html/png and
the hypervolume history, and a server killed mid-study and restarted (same database, same port)
loses nothing and doubles nothing."""

from __future__ import annotations

import math
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from autotune.recording import logged_trials

REPO = Path(__file__).resolve().parents[1]
MODEL = REPO / "studies" / "digits" / "model.py"
STUDY, TRIALS, EPOCHS = "srv", 8, 4
pytestmark = pytest.mark.integration


class MlflowServer:
    """`mlflow server` on 127.0.0.1 in its own process group: a SQLite store in `root` unless
    `backend` names another (PostgreSQL in tests/test_postgres.py), proxied artefacts
    (--serve-artifacts is the default) written to a folder in `root`. Shared by the tests that
    need a real server (test_tracking, test_postgres)."""

    def __init__(self, root: Path, backend: str | None = None) -> None:
        self.root = root
        self.backend = backend or f"sqlite:///{root / 'mlflow.db'}"
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.uri = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None

    def spawn(self) -> None:
        cmd = [sys.executable, "-m", "mlflow", "server",
               "--backend-store-uri", self.backend,
               "--artifacts-destination", str(self.root / "artifacts"),
               "--host", "127.0.0.1", "--port", str(self.port), "--workers", "1"]
        log = open(self.root / "server.log", "ab")  # noqa: SIM115 - owned by the process
        self.proc = subprocess.Popen(cmd, cwd=self.root, stdout=log, stderr=log,
                                     start_new_session=True)

    def start(self) -> None:
        self.spawn()
        self.wait_healthy()

    def wait_healthy(self) -> None:
        assert self.proc is not None
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, (self.root / "server.log").read_text()[-3000:]
            try:
                with urllib.request.urlopen(f"{self.uri}/health", timeout=1) as resp:
                    if resp.status == 200:
                        return
            except OSError:
                time.sleep(0.3)
        raise AssertionError("mlflow server did not become healthy in 60 s")

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)  # the whole group: uvicorn workers too
            self.proc.wait(timeout=10)
        self.proc = None


def _logged(home: Path) -> int:
    return len(logged_trials(home / STUDY))


def _wait(cond: Any, proc: subprocess.Popen, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        if proc.poll() is not None:
            return cond()
        time.sleep(0.2)
    return False


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """One study against the server; the server is SIGKILLed after 3 trials are handed to MLflow,
    stays down while at least one more trial ends, then comes back on the same port and db."""
    root = tmp_path_factory.mktemp("mlflow_server")
    home = root / "home"
    server = MlflowServer(root)
    server.start()
    env = {**os.environ, "AUTOTUNE_HOME": str(home), "RAY_USAGE_STATS_ENABLED": "0"}
    env.pop("MLFLOW_TRACKING_URI", None)
    cmd = [sys.executable, "-m", "autotune", "search", str(MODEL), "--trials", str(TRIALS),
           "--epochs", str(EPOCHS), "--name", STUDY, "--tracking-uri", server.uri]
    search = subprocess.Popen(cmd, cwd=root, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True, start_new_session=True)
    outage: dict[str, Any] = {}
    try:
        assert _wait(lambda: _logged(home) >= 3, search, 150), "no 3 trials logged"
        server.kill()
        outage["at_kill"] = _logged(home)
        server.spawn()  # same port, same database; it takes seconds to come up
        server.wait_healthy()
        outage["at_restart"] = _logged(home)  # trials that ended while the port was dead
        out, _ = search.communicate(timeout=240)
    except BaseException:
        os.killpg(search.pid, signal.SIGKILL)
        search.communicate()
        server.kill()
        raise
    try:
        (root / "search.log").write_text(out)
        assert search.returncode == 0, out[-4000:]
        pending = home / STUDY / "spool" / "pending.jsonl"
        outage["rerun"] = pending.exists() and bool(pending.read_text().strip())
        if outage["rerun"]:
            # The study ended before the server was back: the driver said so, and the next run
            # of the same command (a complete study) sends the spooled records and exits.
            assert "are kept in" in " ".join(out.split()), out[-4000:]
            again = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True,
                                   timeout=180)
            assert again.returncode == 0, again.stdout[-4000:] + again.stderr[-4000:]
            assert f"Study {STUDY} is complete" in again.stdout
        yield {"home": home, "uri": server.uri, "out": out, "root": root, **outage}
    finally:
        server.kill()


def _front(home: Path) -> Any:
    from autotune.results import compute_front
    from autotune.study import Study

    study = Study(STUDY, home)
    return compute_front(study.trial_views(), study.load_config().objective_list()), study


def _runs(uri: str) -> tuple[Any, dict[int, Any]]:
    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name(f"autotune/{STUDY}")
    parents = client.search_runs([exp.experiment_id], "tags.`autotune.role` = 'study'")
    assert len(parents) == 1
    kids = client.search_runs([exp.experiment_id], "tags.`autotune.role` = 'trial'",
                              max_results=1000)
    numbers = [int(r.data.tags["autotune.trial_number"]) for r in kids]
    assert len(numbers) == len(set(numbers)), f"a trial logged twice: {sorted(numbers)}"
    return parents[0], dict(zip(numbers, kids, strict=True))


def _printed_front(out: str) -> tuple[set[int], int | None]:
    """Trials marked * in the last front table the search printed, and the baseline's number."""
    table = out[out.rindex(f"Pareto front of {STUDY} ("):]
    marked, baseline = set(), None
    for m in re.finditer(r"^│\s*(\d+)( \(baseline\))?( \*)?\s*│", table, re.M):
        if m.group(2):
            baseline = int(m.group(1))
        if m.group(3):
            marked.add(int(m.group(1)))
    return marked, baseline


def test_every_trial_once_after_the_outage(run: dict[str, Any]) -> None:
    assert run["at_restart"] > run["at_kill"] >= 3, "no trial ended while the server was down"
    front, study = _front(run["home"])
    views = study.trial_views()
    assert len(views) == TRIALS
    parent, kids = _runs(run["uri"])
    assert sorted(kids) == sorted(v.number for v in views)
    assert parent.info.status == "FINISHED"
    spool = run["home"] / STUDY / "spool"
    pending = spool / "pending.jsonl"
    assert not pending.exists() or not pending.read_text().strip(), "operations left unsent"
    assert not (spool / "failed.jsonl").exists(), (spool / "failed.jsonl").read_text()
    client = MlflowClient(tracking_uri=run["uri"])
    for v in views:  # replays after the restart wrote no curve point twice
        kid = kids[v.number]
        assert kid.data.tags["autotune.status"] == v.status
        hist = client.get_metric_history(kid.info.run_id, "accuracy")
        steps = [m.step for m in hist]
        if v.status in ("finished", "stopped"):
            end = max(v.curves, key=lambda c: c["epoch"])
            again = 0 if end.get("accuracy") == v.metrics["accuracy"] else 1  # the final value,
            assert len(steps) == len(v.curves) + again, steps  # unless it is the curve's end
            assert sorted(set(steps)) == sorted({int(c["epoch"]) for c in v.curves})
            assert kid.data.metrics["accuracy"] == pytest.approx(v.metrics["accuracy"])


def test_pareto_tags_match_the_printed_front(run: dict[str, Any]) -> None:
    front, _ = _front(run["home"])
    printed, baseline = _printed_front(run["out"])
    assert printed == {t.number for t in front.members}
    assert front.baseline is not None and baseline == front.baseline.number
    _, kids = _runs(run["uri"])
    tagged = {n for n, r in kids.items() if r.data.tags.get("autotune.pareto") == "true"}
    assert tagged == printed
    assert all(r.data.tags.get("autotune.pareto") in ("true", "false") for r in kids.values())
    for n, r in kids.items():
        if n in front.ranks:
            assert r.data.tags["autotune.pareto_rank"] == str(front.ranks[n])


class _Tags(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[str] = []
        self.divs: list[dict[str, str | None]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        if tag == "div":
            self.divs.append(dict(attrs))


def test_parent_artefacts(run: dict[str, Any], tmp_path: Path) -> None:
    front, _ = _front(run["home"])
    parent, _ = _runs(run["uri"])
    client = MlflowClient(tracking_uri=run["uri"])
    names = {f.path for f in client.list_artifacts(parent.info.run_id)}
    assert {"pareto.csv", "pareto.html", "pareto.png"} <= names, names
    got = {n: Path(client.download_artifacts(parent.info.run_id, n, str(tmp_path)))
           for n in ("pareto.csv", "pareto.html", "pareto.png")}
    # ... through the server's artefact proxy, into --artifacts-destination
    assert parent.info.artifact_uri.startswith("mlflow-artifacts:")
    assert list((run["root"] / "artifacts").rglob("pareto.png"))

    df = pd.read_csv(got["pareto.csv"])
    assert set(df.loc[df.on_front, "trial"].astype(int)) == {t.number for t in front.members}

    html = got["pareto.html"].read_text()
    assert "plotly" in html
    parser = _Tags()
    parser.feed(html)
    parser.close()
    assert {"html", "head", "body", "script"} <= set(parser.tags)
    assert any("plotly-graph-div" in (d.get("class") or "") for d in parser.divs)
    assert "baseline" in html and "hovertemplate" in html

    from PIL import Image

    assert got["pareto.png"].read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
    with Image.open(got["pareto.png"]) as img:
        img.verify()
        assert img.format == "PNG" and img.size[0] > 100 and img.size[1] > 100


def test_parent_settings_and_summary(run: dict[str, Any]) -> None:
    front, study = _front(run["home"])
    config = study.load_config()
    parent, _ = _runs(run["uri"])
    params, tags, metrics = parent.data.params, parent.data.tags, parent.data.metrics
    assert params["sampler"] == "tpe" and params["objectives"] == "accuracy:max, train_time_s:min"
    assert params["model_sha256"] == tags["autotune.model_sha256"] == config.model_sha256
    assert any(k.startswith("space.") for k in params)
    assert tags["autotune.command"].startswith("autotune search ")
    assert f"--tracking-uri {run['uri']}" in tags["autotune.command"]
    assert {"version.python", "version.torch", "version.optuna", "version.ray",
            "version.mlflow"} <= set(tags)
    assert tags["autotune.optuna_study"] == STUDY

    client = MlflowClient(tracking_uri=run["uri"])
    hv = sorted(client.get_metric_history(parent.info.run_id, "hypervolume"), key=lambda m: m.step)
    expected = front.hypervolume_history()
    assert [m.step for m in hv] == [s for s, _ in expected]  # once per eligible trial
    assert [m.value for m in hv] == pytest.approx([v for _, v in expected])
    assert metrics["hypervolume"] == pytest.approx(front.hypervolume())
    assert metrics["front_size"] == len(front.members)
    # The baseline itself is within 0.5 pp of the baseline, so the ratio exists and is <= 1.
    assert 0 < metrics["best_cost_ratio"] <= 1.0
    assert metrics["best_train_time_s_ratio_within_0.5pp"] == metrics["best_cost_ratio"]
    best = int(metrics["best_cost_trial"])
    best_view = next(t for t in front.eligible if t.number == best)
    assert best_view.metrics["accuracy"] >= front.baseline.metrics["accuracy"] - 0.005


def test_child_runs_hold_the_trial(run: dict[str, Any]) -> None:
    _, study = _front(run["home"])
    parent, kids = _runs(run["uri"])
    for v in study.trial_views():
        kid = kids[v.number]
        tags = kid.data.tags
        assert tags["mlflow.parentRunId"] == parent.info.run_id
        assert tags["autotune.trial_number"] == str(v.number)  # the Optuna trial number
        assert tags["autotune.ray_trial_id"] == v.ray_trial_id and v.ray_trial_id
        assert set(kid.data.params) == set(v.policy)
        assert all(kid.data.params[k] == str(val) for k, val in v.policy.items())
        assert {k for k, val in v.metrics.items() if math.isfinite(val)} <= set(kid.data.metrics)
        if v.status == "stopped":
            assert tags["autotune.stopped_at_epoch"] == str(v.stopped_at_epoch)
        if v.status in ("failed", "diverged"):
            assert kid.info.status == "FAILED" and tags["autotune.error"]
        else:
            assert kid.info.status == "FINISHED" and "autotune.error" not in tags
