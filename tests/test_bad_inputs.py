"""Every bad input in one table (issue 7, item 5): model.py, search-space YAML, CLI flags,
selection rules and policy files. Each is answered with one paragraph naming the file or key and
the fix, exit code 2, no traceback, and leaves an existing study (optuna.db, MLflow, study.json)
untouched.

The commands run in-process through typer's CliRunner (fast); the study they must not touch is a
real one, built first by a real `autotune search`."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient
from typer.testing import CliRunner

from autotune.cli import app
from autotune.study import Study
from tests.conftest import STUDIES, TINY_MODEL

pytestmark = pytest.mark.integration
FIXTURES = Path(__file__).resolve().parent / "fixtures"
DIGITS = STUDIES / "digits" / "model.py"

GOOD = TINY_MODEL
DATASETS_ONLY = GOOD.split("def build_model")[0] + "def datasets():\n    return [], []\n"

MODELS = {
    "syntax": "import torch\n\ndef build_model(hp)\n    pass\n",
    "import_error": "import not_a_module_autotune_knows\n" + GOOD,
    "no_build_model": DATASETS_ONLY,
    "build_model_not_callable": DATASETS_ONLY + "build_model = 3\n",
    "build_model_arity": GOOD.replace("def build_model(hp):", "def build_model():"),
    "build_model_returns_int": GOOD.replace("return nn.Linear(4, 3)", "return 3"),
    "no_datasets": GOOD.split("def datasets")[0],
    "datasets_wrong_shape": GOOD + "\ndef datasets():\n    return [1, 2, 3]\n",
    "datasets_raises": GOOD + "\ndef datasets():\n    raise OSError('data.csv not found')\n",
    "empty_dataset": GOOD.replace("return (x, y), (x[:5], y[:5])",
                                  "return (x[:0], y[:0]), (x[:0], y[:0])"),
    "metric_never_returned": GOOD + "\nOBJECTIVE = ('f1', 'max')\n"
    "def metrics(outputs, targets):\n    return {'acc': 1.0}\n",
    "objective_malformed": GOOD + "\nOBJECTIVE = ('accuracy', 'up')\n",
}

SPACES = {
    "unknown_knob": "optimizer.lrr: {loguniform: [1.0e-3, 1.0e-1]}\n",
    "unknown_distribution": "optimizer.lr: {gaussian: [0.01, 0.001]}\n",
    "low_above_high": "optimizer.lr: {uniform: [0.5, 0.1]}\n",
    "log_bound_zero": "optimizer.lr: {loguniform: [0.0, 0.1]}\n",
    "empty_choice": "optimizer.name: {choice: []}\n",
    "unknown_condition_key":
        "optimizer.momentum: {uniform: [0.8, 0.9], when: {optimizer.nam: sgd}}\n",
    "yaml_syntax": "optimizer.lr: {loguniform: [1.0e-3, 1.0e-1]\nbatch_size: [\n",
}

POLICIES = {
    "unknown_key": "optimizer:\n  lrr: 0.1\n",
    "wrong_type": "batch_size: many\n",
    "yaml_syntax": "optimizer: {lr: [\n",
}


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A real study ("snap") in its own home, bad files beside it, a policy exported from it."""
    root = tmp_path_factory.mktemp("bad")
    home = root / "home"
    model_dir = root / "tiny"
    model_dir.mkdir()
    shutil.copy(FIXTURES / "faulty_model.py", model_dir / "model.py")
    shutil.copy(FIXTURES / "faulty.yaml", model_dir / "faulty.yaml")
    (model_dir / "faults.txt").write_text("none")
    env = {**os.environ, "AUTOTUNE_HOME": str(home)}
    env.pop("MLFLOW_TRACKING_URI", None)
    made = subprocess.run([sys.executable, "-m", "autotune", "search", str(model_dir / "model.py"),
                           "--trials", "3", "--no-early-stop", "--name", "snap"], env=env,
                          text=True, capture_output=True, timeout=600)
    assert made.returncode == 0, made.stdout + made.stderr
    made = subprocess.run([sys.executable, "-m", "autotune", "export", "snap", "--select",
                           "best:accuracy", "-o", str(root / "snap-policy.yaml")], env=env,
                          text=True, capture_output=True, timeout=600)
    assert made.returncode == 0, made.stdout + made.stderr
    paths = {"root": root, "home": home, "model": model_dir / "model.py",
             "policy": root / "snap-policy.yaml"}
    for name, text in MODELS.items():
        (root / name).mkdir()
        (root / name / "model.py").write_text(text)
        paths[f"model:{name}"] = root / name / "model.py"
    for name, text in SPACES.items():
        paths[f"space:{name}"] = root / f"space-{name}.yaml"
        paths[f"space:{name}"].write_text(text)
    for name, text in POLICIES.items():
        paths[f"policy:{name}"] = root / f"policy-{name}.yaml"
        paths[f"policy:{name}"].write_text(text)
    return paths


def snapshot(paths: dict[str, Path]) -> tuple:
    home = paths["home"]
    study = Study("snap", home)
    client = MlflowClient(f"sqlite:///{home / 'mlflow.db'}")
    exps = client.search_experiments()
    runs = sum(len(client.search_runs([e.experiment_id], max_results=1000)) for e in exps)
    return (len(study.optuna_study().trials), runs, (study.dir / "study.json").read_bytes(),
            sorted(p.name for p in home.iterdir()), sorted(e.name for e in exps))


@pytest.fixture(scope="module")
def before(world: dict[str, Path]) -> tuple:
    return snapshot(world)


def _search(model: str, *flags: str) -> list[str]:
    # the study's own settings: a flag that slipped through would resume it, not extend it
    return ["search", f"{{{model}}}", "--name", "snap", "--no-early-stop", "--trials", "3",
            *flags]


# (id, command with {placeholders} for world paths, fragments the answer must contain)
CASES: list[tuple[str, list[str], list[str]]] = [
    # model.py
    ("model-missing", ["search", "{root}/nowhere/model.py"],
     ["does not exist", "nowhere/model.py"]),
    ("model-syntax", _search("model:syntax"), ["syntax error at line 3", "syntax/model.py"]),
    ("model-import-error", _search("model:import_error"),
     ["not_a_module_autotune_knows", "import_error/model.py"]),
    ("model-no-build_model", _search("model:no_build_model"), ["no `build_model` function"]),
    ("model-build_model-not-callable", _search("model:build_model_not_callable"),
     ["`build_model` is a int, not a function"]),
    ("model-build_model-arity", _search("model:build_model_arity"),
     ["`build_model` must take one argument"]),
    ("model-build_model-returns-int", _search("model:build_model_returns_int"),
     ["build_model(hp) returned int", "torch.nn.Module"]),
    ("model-no-datasets", _search("model:no_datasets"), ["no `datasets` function"]),
    ("model-datasets-wrong-shape", _search("model:datasets_wrong_shape"),
     ["datasets() returned a list of 3 items"]),
    ("model-datasets-raises", _search("model:datasets_raises"),
     ["datasets() raised OSError", "data.csv not found"]),
    ("model-empty-dataset", _search("model:empty_dataset"), ["empty"]),
    ("model-metric-never-returned", _search("model:metric_never_returned"),
     ["OBJECTIVE names 'f1'", "['acc']"]),
    ("model-objective-malformed", _search("model:objective_malformed"), ["OBJECTIVE must be"]),
    # search-space YAML
    ("space-missing", _search("model", "--space", "{root}/none.yaml"), ["none.yaml"]),
    ("space-unknown-knob", _search("model", "--space", "{space:unknown_knob}"),
     ["optimizer.lrr"]),
    ("space-unknown-distribution", _search("model", "--space", "{space:unknown_distribution}"),
     ["gaussian"]),
    ("space-low-above-high", _search("model", "--space", "{space:low_above_high}"),
     ["optimizer.lr"]),
    ("space-log-bound-zero", _search("model", "--space", "{space:log_bound_zero}"),
     ["optimizer.lr"]),
    ("space-empty-choice", _search("model", "--space", "{space:empty_choice}"),
     ["optimizer.name"]),
    ("space-unknown-condition-key", _search("model", "--space", "{space:unknown_condition_key}"),
     ["optimizer.nam"]),
    ("space-yaml-syntax", _search("model", "--space", "{space:yaml_syntax}"),
     ["space-yaml_syntax.yaml"]),
    # CLI flags
    ("flag-unknown-objective", _search("model", "--objective", "nonsense:max"),
     ["nonsense", "is not measured"]),
    ("flag-objective-direction", _search("model", "--objective", "accuracy:up"),
     ["direction must be"]),
    ("flag-objective-twice", _search("model", "--objective", "accuracy:max", "--objective",
                                     "accuracy:max"), ["names a metric twice"]),
    ("flag-constraint-syntax", _search("model", "--constraint", "latency < fast"),
     ["is not of the form"]),
    ("flag-constraint-unknown-metric", _search("model", "--constraint", "bogus_ms<=5"),
     ["bogus_ms", "is not measured"]),
    ("flag-gpus-without-gpu", _search("model", "--gpus-per-trial", "1"),
     ["--gpus-per-trial 1 asks for GPUs"]),
    ("flag-unreachable-address", _search("model", "--address", "127.0.0.1:9"),
     ["--address 127.0.0.1:9", "nothing answers"]),
    ("flag-unsupported-tracking-uri", _search("model", "--tracking-uri", "foo://bar/x"),
     ["Cannot open the MLflow store foo://bar/x", "--tracking-uri"]),
    ("flag-negative-trials", _search("model", "--trials", "-1"), ["--trials must be at least 1"]),
    ("flag-zero-epochs", _search("model", "--epochs", "0"), ["--epochs must be at least 1"]),
    ("flag-unknown-sampler", _search("model", "--sampler", "bogus"), ["--sampler 'bogus'"]),
    ("flag-time-budget", _search("model", "--time-budget", "soon"), ["not a positive duration"]),
    ("flag-trial-timeout", _search("model", "--trial-timeout", "-5m"),
     ["not a positive duration"]),
    ("flag-rungs", _search("model", "--rungs", "three"), ["rung schedule 'three'"]),
    ("flag-bad-study-name", ["search", "{model}", "--name", "a/b"], ["Study name 'a/b'"]),
    # selection rules
    ("select-syntax", ["export", "snap", "--select", "min:train_time_s where", "-o",
                       "{root}/x.yaml"], ["min:train_time_s where"]),
    ("select-unknown-metric", ["export", "snap", "--select", "best:bogus", "-o", "{root}/x.yaml"],
     ["bogus"]),
    ("select-nothing-satisfies", ["export", "snap", "--select",
                                  "min:train_time_s where accuracy>=1.5", "-o", "{root}/x.yaml"],
     ["accuracy>=1.5", "the closest is trial"]),
    ("select-unknown-study", ["export", "nostudy", "-o", "{root}/x.yaml"], ["nostudy"]),
    # policy files
    ("policy-missing", ["train", "{model}", "--policy", "{root}/nope.yaml"], ["nope.yaml"]),
    ("policy-unknown-key", ["train", "{model}", "--policy", "{policy:unknown_key}"],
     ["optimizer.lrr"]),
    ("policy-wrong-type", ["train", "{model}", "--policy", "{policy:wrong_type}"],
     ["batch_size"]),
    ("policy-yaml-syntax", ["train", "{model}", "--policy", "{policy:yaml_syntax}"],
     ["policy-yaml_syntax.yaml"]),
    ("policy-from-another-model", ["train", str(DIGITS), "--policy", "{policy}"],
     ["this policy was exported from", "--force"]),
    ("policy-set-unknown-knob", ["train", "{model}", "--set", "optimizer.lrr=0.1"],
     ["unknown key 'optimizer.lrr'"]),
]


def test_at_least_30_cases() -> None:
    assert len(CASES) >= 30
    assert len({c[0] for c in CASES}) == len(CASES)


@pytest.mark.parametrize(("args", "fragments"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_is_refused_with_one_paragraph(world: dict[str, Path], before: tuple,
                                                 monkeypatch: pytest.MonkeyPatch,
                                                 args: list[str], fragments: list[str]) -> None:
    monkeypatch.setenv("AUTOTUNE_HOME", str(world["home"]))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(world["root"])
    argv = [_fill(a, world) for a in args]
    result = CliRunner().invoke(app, argv)
    out = result.output
    assert result.exit_code == 2, out
    assert isinstance(result.exception, SystemExit), repr(result.exception)
    assert "Traceback" not in out
    text = " ".join(out.split())
    assert text.count("error:") == 1 and "Fix:" in text, out
    assert "\n\n" not in out.strip(), f"more than one paragraph: {out!r}"
    for fragment in fragments:
        assert fragment in text, f"{fragment!r} not in {out!r}"


def _fill(arg: str, world: dict[str, Path]) -> str:
    for key, value in world.items():
        arg = arg.replace(f"{{{key}}}", str(value))
    return arg


def test_the_existing_study_is_untouched(world: dict[str, Path], before: tuple) -> None:
    """Runs after the table (file order): nothing above changed the study or the store."""
    assert snapshot(world) == before
    assert before[0] >= 3 and before[1] >= 4  # 3 trials + the parent run
