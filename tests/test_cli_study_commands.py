"""End to end: one small real study, then pareto, studies, export, train --policy and ui."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pandas as pd
import pytest
import yaml
from typer.testing import CliRunner

from autotune.cli import app
from tests.test_cluster import free_port

REPO = Path(__file__).resolve().parents[1]
MODEL = REPO / "studies" / "digits" / "model.py"
pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """AUTOTUNE_HOME holding study 't' (6 trials × 4 epochs of the digits CNN), run once."""
    root = tmp_path_factory.mktemp("study")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("AUTOTUNE_HOME", str(root / "home"))
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        mp.chdir(root)
        result = CliRunner().invoke(app, ["search", str(MODEL), "--trials", "6", "--epochs", "4",
                                          "--name", "t"])
        assert result.exit_code == 0, result.output
    return root / "home"


@pytest.fixture
def env(home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("AUTOTUNE_HOME", str(home))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)
    return home


def invoke(*args: str) -> object:
    return CliRunner().invoke(app, list(args))


def test_pareto_files_match_mlflow_front(env: Path) -> None:
    result = invoke("pareto", "t")
    assert result.exit_code == 0, result.output
    assert "Pareto front of t" in result.output and "baseline" in result.output
    folder = env / "t" / "pareto"
    assert f"wrote {folder / 'pareto.csv'}" in result.output.replace("\n", "")
    assert (folder / "pareto.png").read_bytes().startswith(b"\x89PNG")
    assert "plotly" in (folder / "pareto.html").read_text()
    df = pd.read_csv(folder / "pareto.csv")
    on_front = set(df.loc[df.on_front, "trial"].astype(int))
    assert on_front

    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{env / 'mlflow.db'}")
    exp = client.get_experiment_by_name("autotune/t")
    runs = client.search_runs([exp.experiment_id], "tags.`autotune.pareto` = 'true'")
    assert {int(r.data.tags["autotune.trial_number"]) for r in runs} == on_front


def test_pareto_out_dir(env: Path, tmp_path: Path) -> None:
    result = invoke("pareto", "t", "--out", str(tmp_path / "elsewhere"))
    assert result.exit_code == 0, result.output
    assert (tmp_path / "elsewhere" / "pareto.csv").is_file()


def test_studies_lists_it(env: Path) -> None:
    result = invoke("studies")
    assert result.exit_code == 0, result.output
    row = next(line for line in result.output.splitlines() if line.strip("│ ").startswith("t "))
    assert "6/6" in row


def test_unknown_study(env: Path) -> None:
    for cmd in (["pareto", "nope"], ["export", "nope", "--select", "knee"]):
        result = invoke(*cmd)
        assert result.exit_code == 2
        assert "no study 'nope'" in result.output and "existing studies: t" in result.output


def test_export_knee_then_train_reproduces(env: Path, tmp_path: Path) -> None:
    result = invoke("export", "t", "--select", "knee", "-o", "policy.yaml")
    assert result.exit_code == 0, result.output
    doc = yaml.safe_load((tmp_path / "policy.yaml").read_text())
    prov = doc["provenance"]
    assert prov["rule"] == "knee" and prov["study"] == "t"
    assert prov["mlflow_run_id"], prov.get("mlflow_note")

    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{env / 'mlflow.db'}")
    run = client.get_run(prov["mlflow_run_id"])
    assert run.data.tags["autotune.trial_number"] == str(prov["trial"])

    # Trials ran with one torch thread; the same thread count gives the same float reductions.
    result = invoke("train", str(MODEL), "--policy", "policy.yaml", "--threads", "1",
                    "--json", "run.json")
    assert result.exit_code == 0, result.output
    metrics = json.loads((tmp_path / "run.json").read_text())["metrics"]
    recorded = prov["metrics"]
    assert metrics["train_flops"] == recorded["train_flops"]
    assert metrics["accuracy"] == pytest.approx(recorded["accuracy"], abs=0.005)


def test_train_refuses_policy_of_another_model(env: Path, tmp_path: Path) -> None:
    assert invoke("export", "t", "--select", "best:accuracy", "-o", "p.yaml").exit_code == 0
    other = tmp_path / "other" / "model.py"
    other.parent.mkdir()
    space = REPO / "search_spaces" / "digits.yaml"
    other.write_text(MODEL.read_text().replace('"../../search_spaces/digits.yaml"', f'"{space}"')
                     + "\n# a different model file\n")
    result = invoke("train", str(other), "--policy", "p.yaml")
    assert result.exit_code == 2
    assert "this policy was exported from" in result.output and "--force" in result.output
    assert "Traceback" not in result.output


def test_export_unsatisfiable_rule(env: Path, tmp_path: Path) -> None:
    rule = "min:train_time_s where accuracy>=1.5"
    result = invoke("export", "t", "--select", rule, "-o", "x.yaml")
    assert result.exit_code == 2
    text = " ".join(result.output.split())
    assert "no trial has accuracy>=1.5" in text and "the closest is trial" in text
    assert "Traceback" not in result.output
    assert not (tmp_path / "x.yaml").exists()


def test_export_bad_rule_and_metric(env: Path) -> None:
    bad = invoke("export", "t", "--select", "fastest")
    assert bad.exit_code == 2 and "RULE := knee" in " ".join(bad.output.split())
    unknown = invoke("export", "t", "--select", "best:acc")
    assert unknown.exit_code == 2 and "accuracy" in unknown.output
    assert "config/" not in unknown.output


def test_ui_serves_the_store_on_loopback(env: Path, tmp_path: Path) -> None:
    import psutil

    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "autotune", "ui", "--port", str(port)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
        env={**os.environ, "AUTOTUNE_HOME": str(env)}, cwd=tmp_path)
    try:
        deadline, status = time.time() + 60, None
        while time.time() < deadline and proc.poll() is None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as r:
                    status = r.status
                    break
            except OSError:
                time.sleep(0.5)
        assert status == 200, f"UI not up (exit {proc.poll()})"
        with urllib.request.urlopen(  # the study's experiment is in the store it serves
                f"http://127.0.0.1:{port}/api/2.0/mlflow/experiments/get-by-name"
                "?experiment_name=autotune/t", timeout=5) as r:
            assert json.load(r)["experiment"]["name"] == "autotune/t"
        procs = [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(recursive=True)]
        listening = {c.laddr.ip for p in procs for c in p.net_connections("tcp")
                     if c.status == psutil.CONN_LISTEN and c.laddr.port == port}
        assert listening == {"127.0.0.1"}
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            out, _ = proc.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            out, _ = proc.communicate()
    assert f"MLflow UI: http://127.0.0.1:{port} (Ctrl-C to stop)" in out
