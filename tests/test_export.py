"""Export on a hand-made study (no Ray, no training): the YAML, its provenance, origin checks."""

from __future__ import annotations

import hashlib
from pathlib import Path

import optuna
import pytest
import yaml
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState, create_trial

from autotune import study as st
from autotune.errors import PolicyError, SelectionError, StudyError
from autotune.export import check_origin, export_policy, find_run_id, load_state, open_study
from autotune.policy import Policy, load_policy
from autotune.study import Study, StudyConfig


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("AUTOTUNE_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)
    return tmp_path / "home"


@pytest.fixture
def made(home: Path, tmp_path: Path) -> Study:
    """Study 'hand' with a baseline, two front trials, a dominated and an early-stopped trial."""
    model = tmp_path / "model.py"
    model.write_text("# stands in for a model file\n")
    s = Study("hand")
    s.save_config(StudyConfig(
        name="hand", model_file=str(model),
        model_sha256=hashlib.sha256(model.read_bytes()).hexdigest(),
        objectives=[("accuracy", "max"), ("train_time_s", "min")], constraints=[], space_file="",
        sampler="tpe", epochs=4, trials=5, seed=0, early_stop=True, rungs=[1], eta=3))
    ost = optuna.create_study(study_name="hand", storage=s.storage_url,
                              directions=["maximize", "minimize"])
    rows = [  # number, status, accuracy, time, lr
        (0, "finished", 0.97, 10.0, 3e-3),
        (1, "finished", 0.96, 3.0, 1e-2),
        (2, "finished", 0.90, 1.0, 5e-2),
        (3, "finished", 0.89, 5.0, 1e-1),
        (4, "stopped", 0.99, 0.5, 2e-2),
    ]
    for n, status, acc, t, lr in rows:
        pol = Policy().with_overrides({"optimizer.lr": lr, "epochs": 4}).flat()
        ost.add_trial(create_trial(
            state=TrialState.COMPLETE if status == "finished" else TrialState.PRUNED,
            values=[acc, t] if status == "finished" else None,
            params={"lr": lr}, distributions={"lr": FloatDistribution(1e-4, 1.0, log=True)},
            user_attrs={st.STATUS: status, st.POLICY: pol, st.BASELINE: n == 0,
                        st.METRICS: {"accuracy": acc, "train_time_s": t, "train_flops": 1e9 + n,
                                     "config/threads": 1.0}}))
    return s


def test_state_counts_and_front(made: Study) -> None:
    state = load_state(made)
    assert state.counts == {"finished": 4, "stopped": 1, "failed": 0}
    assert [t.number for t in state.front.members] == [2, 1, 0]
    assert state.front.baseline.number == 0


def test_export_writes_policy_and_provenance(made: Study, tmp_path: Path) -> None:
    out = tmp_path / "sub" / "policy.yaml"
    done = export_policy("hand", "min:train_time_s where accuracy>=0.95", out)
    assert done.trial.number == 1
    doc = yaml.safe_load(out.read_text())
    assert doc["policy"]["optimizer"]["lr"] == pytest.approx(1e-2)  # nested, not dotted
    prov = doc["provenance"]
    assert prov["study"] == "hand" and prov["trial"] == 1
    assert prov["rule"] == "min:train_time_s where accuracy>=0.95"
    assert prov["objectives"] == {"accuracy": 0.96, "train_time_s": 3.0}
    assert prov["metrics"]["train_flops"] == 1_000_000_001
    assert "config/threads" not in prov["metrics"]
    assert prov["model_sha256"] == made.load_config().model_sha256
    assert prov["model_file"].endswith("model.py")
    assert {"python", "torch", "optuna", "mlflow"} <= set(prov["packages"])
    assert prov["exported_at"].endswith("+00:00")
    # No MLflow store was ever created: null run id with the reason, and none created by looking.
    assert prov["mlflow_run_id"] is None and "no MLflow store" in prov["mlflow_note"]
    assert not (made.home / "mlflow.db").exists()
    assert load_policy(out) == Policy.from_flat(done.trial.policy)


def test_unreachable_store_gives_null_run_id(made: Study, tmp_path: Path) -> None:
    uri = "http://user:s3cret@127.0.0.1:9"  # port 9 (discard): nothing listens
    run_id, note = find_run_id(uri, "hand", 1)
    assert run_id is None and "could not be read" in note and "s3cret" not in note
    done = export_policy("hand", "knee", tmp_path / "p.yaml", tracking_uri=uri)
    assert done.provenance["mlflow_run_id"] is None
    assert "s3cret" not in (tmp_path / "p.yaml").read_text()


def test_changed_model_file_is_noted(made: Study, tmp_path: Path) -> None:
    Path(made.load_config().model_file).write_text("# edited after the study\n")
    done = export_policy("hand", "knee", tmp_path / "p.yaml")
    assert "has changed since the study ran" in done.provenance["model_note"]


def test_unknown_study_lists_existing(made: Study) -> None:
    with pytest.raises(StudyError, match=r"no study 'nope'.*existing studies: hand"):
        open_study("nope")


def test_study_by_path(made: Study) -> None:
    assert open_study(str(made.dir)).name == "hand"


def test_unsatisfiable_rule(made: Study, tmp_path: Path) -> None:
    with pytest.raises(SelectionError, match="no trial has accuracy>=0.99 .*closest is trial 0 "
                                             "with accuracy=0.97"):
        export_policy("hand", "min:train_time_s where accuracy>=0.99", tmp_path / "p.yaml")
    assert not (tmp_path / "p.yaml").exists()


def test_check_origin(tmp_path: Path) -> None:
    pol = tmp_path / "p.yaml"
    prov = {"model_file": "/a/model.py", "model_sha256": "ab" * 32}
    pol.write_text(yaml.safe_dump({"policy": {"epochs": 2}, "provenance": prov}))
    assert check_origin(pol, Path("/a/model.py"), "ab" * 32, force=False) is None
    with pytest.raises(PolicyError, match=r"from /a/model.py \(sha256 abab.*pass --force"):
        check_origin(pol, Path("/b/model.py"), "cd" * 32, force=False)
    assert "anyway" in check_origin(pol, Path("/b/model.py"), "cd" * 32, force=True)
    bare = tmp_path / "bare.yaml"
    bare.write_text("epochs: 2\n")  # a hand-written policy has no provenance: nothing to check
    assert check_origin(bare, Path("/b/model.py"), "cd" * 32, force=False) is None
