"""Issue 8, storage for clusters: study state on a shared AUTOTUNE_HOME and Ray's experiment
storage at a path or URI (--storage). A study started by one driver machine, killed, is resumed by
another machine that mounts the same AUTOTUNE_HOME and has its own checkout of the model (same
contents, another absolute path)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from autotune.errors import StudyError
from autotune.runner import _check_same, _ray_storage, check_storage
from autotune.study import Study, StudyConfig
from tests.test_cluster import copy_model, end_session, wait_for


# ---- fast unit tests ----------------------------------------------------------------------------
def test_storage_path_is_made_absolute(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert check_storage("shared/ray") == str(tmp_path / "shared" / "ray")


def test_storage_uri_pyarrow_opens_is_kept() -> None:
    assert check_storage("file:///tmp/autotune-ray") == "file:///tmp/autotune-ray"


def test_storage_uri_pyarrow_cannot_open_is_refused() -> None:
    with pytest.raises(StudyError, match="pyarrow cannot open it"):
        check_storage("nosuchscheme://bucket/path")


def test_ray_storage_is_per_study(tmp_path: Path) -> None:
    from autotune.runner import SearchOptions

    study = Study("s1", tmp_path)
    assert _ray_storage(SearchOptions(model_file=Path("m.py")), study) == str(study.ray_dir)
    opts = SearchOptions(model_file=Path("m.py"), storage="s3://bucket/ray/")
    assert _ray_storage(opts, study) == "s3://bucket/ray/s1"


def test_ray_result_loggers_are_csv_and_json_and_the_users_own(monkeypatch: pytest.MonkeyPatch) -> None:
    from ray.tune.utils.callback import _create_default_callbacks

    from autotune.envvars import scoped_env
    from autotune.runner import _ray_result_loggers

    def loggers() -> list[str]:
        with scoped_env(_ray_result_loggers()):
            return [type(c).__name__ for c in _create_default_callbacks([]) if "Logger" in type(c).__name__]

    monkeypatch.delenv("RAY_TUNE_CALLBACKS", raising=False)
    monkeypatch.delenv("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", raising=False)
    assert sorted(loggers()) == ["CSVLoggerCallback", "JsonLoggerCallback"]
    assert "RAY_TUNE_CALLBACKS" not in os.environ  # restored after the block
    monkeypatch.setenv("RAY_TUNE_CALLBACKS", "ray.tune.logger.TBXLoggerCallback")  # the user wants TensorBoard
    assert sorted(loggers()) == ["CSVLoggerCallback", "JsonLoggerCallback", "TBXLoggerCallback"]
    assert os.environ["RAY_TUNE_CALLBACKS"] == "ray.tune.logger.TBXLoggerCallback"
    monkeypatch.setenv("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")  # the user wants none of Ray's
    monkeypatch.delenv("RAY_TUNE_CALLBACKS")
    assert loggers() == []


def _config(model: str, space: str, space_sha: str = "abc", **kw: object) -> StudyConfig:
    base = dict(name="s", model_file=model, model_sha256="m1", objectives=[("accuracy", "max")],
                constraints=[], space_file=space, sampler="tpe", epochs=3, trials=4, seed=0,
                early_stop=True, rungs=[], eta=3, space_sha256=space_sha)
    return StudyConfig(**{**base, **kw})  # type: ignore[arg-type]


def test_a_moved_study_resumes_by_contents_and_records_the_new_paths(tmp_path: Path) -> None:
    study = Study("s", tmp_path)
    study.save_config(_config("/machineA/proj/model.py", "/machineA/proj/space.yaml"))
    now = _check_same(study, _config("/machineB/co/proj/model.py", "/machineB/co/proj/space.yaml",
                                     trials=6))
    assert (now.model_file, now.space_file, now.trials) == (
        "/machineB/co/proj/model.py", "/machineB/co/proj/space.yaml", 6)


def test_a_changed_space_is_still_refused(tmp_path: Path) -> None:
    study = Study("s", tmp_path)
    study.save_config(_config("/a/model.py", "/a/space.yaml"))
    with pytest.raises(StudyError, match="space_sha256"):
        _check_same(study, _config("/b/model.py", "/b/space.yaml", space_sha="other"))


def test_a_study_saved_before_space_hashes_compares_paths(tmp_path: Path) -> None:
    study = Study("s", tmp_path)
    study.save_config(_config("/a/model.py", "/a/space.yaml", space_sha=""))
    assert _check_same(study, _config("/a/model.py", "/a/space.yaml")).trials == 4
    with pytest.raises(StudyError, match="space_file"):
        _check_same(study, _config("/b/model.py", "/b/space.yaml"))


# ---- end to end ---------------------------------------------------------------------------------
@pytest.mark.integration
@pytest.mark.timeout(300)
def test_study_resumes_from_another_driver_machine(tmp_path: Path) -> None:
    shared = tmp_path / "shared-mount" / "autotune"  # AUTOTUNE_HOME on the shared mount
    model_a = copy_model(tmp_path / "machine-a" / "project")
    model_b = copy_model(tmp_path / "machine-b" / "checkout" / "project")  # same files, other path
    raystore = tmp_path / "shared-mount" / "ray-results"
    env = {**os.environ, "AUTOTUNE_HOME": str(shared), "COLUMNS": "200"}
    env.pop("MLFLOW_TRACKING_URI", None)
    trials = 4
    args = ["--name", "moved", "--trials", str(trials), "--no-early-stop", "--cpus-per-trial", "1"]

    log = tmp_path / "a.log"
    first = subprocess.Popen([sys.executable, "-m", "autotune", "search", str(model_a), *args],
                             cwd=model_a.parent.parent, env=env, stdout=open(log, "w"),  # noqa: SIM115
                             stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_for(lambda: len(Study("moved", shared).trial_views()) >= 1, 180,
                 "a finished trial on machine A", log)
    finally:
        end_session(first.pid)  # machine A dies: the driver and its local Ray, SIGKILL
        first.wait(timeout=30)
    done_on_a = len(Study("moved", shared).trial_views())
    assert done_on_a < trials, "machine A finished the study before it was killed"

    second = subprocess.run(
        [sys.executable, "-m", "autotune", "search", str(model_b), *args,
         "--storage", raystore.as_uri()],
        cwd=model_b.parent.parent, env=env, capture_output=True, text=True, timeout=240)
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]

    study = Study("moved", shared)
    views = study.trial_views()
    assert len(views) == trials and all(v.status == "finished" for v in views)
    assert study.load_config().model_file == str(model_b)  # the study now points at B's copy
    # Ray's experiment folder went to --storage (a file:// URI here; s3:// or gs:// the same way).
    assert list((raystore / "moved").glob("run-*")), list(raystore.rglob("*"))[:20]
    client = MlflowClient(f"sqlite:///{shared / 'mlflow.db'}")
    exp = client.get_experiment_by_name("autotune/moved")
    children = client.search_runs([exp.experiment_id], "tags.`autotune.role` = 'trial'")
    assert sorted(int(r.data.tags["autotune.trial_number"]) for r in children) == sorted(
        v.number for v in views)
