"""End to end: each example study trains through `autotune train` and reaches its quality.

Every run goes through the CLI (CliRunner) with --threads 2, as a user would run it.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from autotune.cli import app

pytestmark = pytest.mark.integration

STUDIES = Path(__file__).resolve().parents[1] / "studies"
DIGITS = STUDIES / "digits" / "model.py"
POSITIVE_COSTS = ("train_time_s", "train_flops", "infer_latency_ms", "infer_latency_batch_ms",
                  "params", "nonzero_params", "model_size_mb")


def train(tmp_path: Path, model: Path, *sets: str, expect: int = 0) -> dict[str, Any]:
    out = tmp_path / f"run{len(list(tmp_path.glob('run*.json')))}.json"
    args = ["train", str(model), "--threads", "2", "--device", "cpu", "--json", str(out)]
    for s in sets:
        args += ["--set", s]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == expect, result.output
    assert "Traceback" not in result.output
    return json.loads(out.read_text())


def assert_costs(metrics: dict[str, float]) -> None:
    for key in POSITIVE_COSTS:
        assert key in metrics, key
        assert math.isfinite(metrics[key]) and metrics[key] > 0, (key, metrics[key])
    assert "peak_mem_mb" in metrics and metrics["peak_mem_mb"] >= 0
    if "energy_j" in metrics:  # only where a counter is readable; never invented
        assert metrics["energy_j"] >= 0


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    return train(tmp_path_factory.mktemp("digits"), DIGITS)


def test_digits_default_policy(digits_run: dict[str, Any]) -> None:
    assert digits_run["status"] == "finished"
    m = digits_run["metrics"]
    assert m["accuracy"] >= 0.95
    assert_costs(m)
    assert m["params"] == m["nonzero_params"]
    history = digits_run["history"]
    assert [row["epoch"] for row in history] == list(range(1, 11))
    assert all("accuracy" in row for row in history)
    times = [row["train_time_s"] for row in history]
    assert times == sorted(times)  # cumulative


def test_digits_structured_pruning_cuts_costs(tmp_path: Path, digits_run: dict[str, Any]) -> None:
    # Pruned after epoch 3 (default: after half the epochs, which leaves train_flops only ~37 %
    # lower because the first half trains the full model); the serving costs don't depend on it.
    pruned = train(tmp_path, DIGITS, "prune.method=structured", "prune.ratio=0.5",
                   "prune.at_epoch=3")
    base, m = digits_run["metrics"], pruned["metrics"]
    assert pruned["status"] == "finished"
    assert m["accuracy"] >= 0.90
    assert m["params"] <= 0.6 * base["params"]
    assert m["train_flops"] <= 0.6 * base["train_flops"]
    assert m["infer_flops"] <= 0.6 * base["infer_flops"]
    assert_costs(m)


@pytest.mark.parametrize("precision", ["bf16", "int8"])
def test_digits_reduced_precision_finishes(tmp_path: Path, precision: str,
                                           digits_run: dict[str, Any]) -> None:
    run = train(tmp_path, DIGITS, f"precision={precision}", "epochs=4")
    m = run["metrics"]
    assert run["status"] == "finished"
    assert m["accuracy"] >= 0.85
    assert_costs(m)
    base_size = digits_run["metrics"]["model_size_mb"]
    if precision == "bf16":
        assert m["model_size_mb"] < 0.75 * base_size
    else:
        # torch.ao dynamic quantisation covers Linear/RNN layers only: the CNN's convolutions stay
        # fp32, so only the classifier shrinks.
        assert m["model_size_mb"] < base_size


def test_charlm_default_policy(tmp_path: Path) -> None:
    run = train(tmp_path, STUDIES / "charlm" / "model.py")
    m = run["metrics"]
    assert run["status"] == "finished"
    assert m["perplexity"] < 8  # a unigram model is at ~21
    assert_costs(m)


def test_regression_default_policy(tmp_path: Path) -> None:
    run = train(tmp_path, STUDIES / "regression" / "model.py")
    m = run["metrics"]
    assert run["status"] == "finished"
    assert m["mse"] < 0.8
    assert_costs(m)


def test_diverging_sgd_ends_as_diverged(tmp_path: Path) -> None:
    run = train(tmp_path, STUDIES / "regression" / "model.py", "optimizer.name=sgd",
                "optimizer.lr=10", expect=1)
    assert run["status"] == "diverged"
    assert math.isnan(run["metrics"]["mse"])


NAN_LOSS = """
import torch
from torch import nn

OBJECTIVE = ("mse", "min")

def build_model(hp):
    return nn.Linear(3, 1)

def datasets():
    x = torch.randn(64, 3)
    return (x, x[:, :1]), (x[:16], x[:16, :1])

def loss_fn(outputs, targets):
    return (outputs - targets).pow(2).mean() * float("nan")

def metrics(outputs, targets):
    return {"mse": float((outputs - targets).pow(2).mean())}
"""


def test_nan_loss_ends_as_diverged(tmp_path: Path) -> None:
    path = tmp_path / "model.py"
    path.write_text(NAN_LOSS)
    run = train(tmp_path, path, "epochs=3", expect=1)
    assert run["status"] == "diverged"
    assert math.isnan(run["metrics"]["mse"])


CUSTOM = """
import torch
from torch import nn

OBJECTIVE = ("accuracy", "max")

def train(policy, report):
    torch.manual_seed(policy.seed)
    x = torch.randn(256, 8)
    y = (x[:, 0] + x[:, 1] > 0).long()
    model = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 2))
    opt = policy.make_optimizer(model)
    steps = 256 // policy.batch_size
    sched = policy.make_scheduler(opt, steps)
    for _ in range(policy.epochs):
        for i in range(steps):
            xb = x[i * policy.batch_size:(i + 1) * policy.batch_size]
            yb = y[i * policy.batch_size:(i + 1) * policy.batch_size]
            with policy.autocast("cpu"):
                loss = nn.functional.cross_entropy(model(xb), yb)
            loss.backward()
            opt.step()
            opt.zero_grad()
            sched.step()
        with torch.no_grad():
            report(accuracy=(model(x).argmax(1) == y).float().mean().item())
    return model
"""


def test_custom_loop_runs_and_is_measured(tmp_path: Path) -> None:
    path = tmp_path / "model.py"
    path.write_text(CUSTOM)
    run = train(tmp_path, path, "epochs=5", "batch_size=32", "optimizer.lr=0.01")
    m = run["metrics"]
    assert run["status"] == "finished"
    assert len(run["history"]) == 5
    assert m["accuracy"] >= 0.8
    assert m["params"] == 8 * 32 + 32 + 32 * 2 + 2
    assert m["model_size_mb"] > 0
    assert m["train_time_s"] > 0
