"""What a cluster's workers get (issue 8): the runtime_env autotune ships with --address and how a
worker finds the shipped model.py. Fast: no Ray (tests/test_cluster.py runs the real thing).
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

import autotune
from autotune.runner import SearchOptions, _runtime_env
from autotune.study import Study
from autotune.trainable import _model_path


def test_local_ray_ships_nothing(tmp_path: Path) -> None:
    mf = SimpleNamespace(path=tmp_path / "proj" / "model.py")
    assert _runtime_env(SearchOptions(model_file=mf.path), mf, Study("s", tmp_path)) is None


def test_cluster_gets_the_model_folder_and_autotune(tmp_path: Path) -> None:
    mf = SimpleNamespace(path=tmp_path / "proj" / "model.py")
    study = Study("s", tmp_path / "proj" / "my_studies")  # a studies home inside the folder
    env = _runtime_env(SearchOptions(model_file=mf.path, address="10.0.0.1:6379"), mf, study)
    assert env is not None
    assert env["working_dir"] == str(tmp_path / "proj")
    assert env["py_modules"] == [str(Path(autotune.__file__).parent)]
    assert "/my_studies" in env["excludes"] and ".venv" in env["excludes"]


def test_worker_loads_the_shipped_copy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    shipped = tmp_path / "runtime_resources" / "_ray_pkg_1"
    shipped.mkdir(parents=True)
    (shipped / "model.py").write_text("")
    trial_dir = tmp_path / "trial"  # Tune moves the trial into its own folder
    trial_dir.mkdir()
    monkeypatch.chdir(trial_dir)
    monkeypatch.setenv("TUNE_ORIG_WORKING_DIR", str(shipped))
    config = {"model_file": "/driver/home/proj/model.py", "model_relpath": "model.py"}
    assert _model_path(config) == str(shipped / "model.py")


def test_without_a_shipped_copy_the_driver_path_is_used(tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("TUNE_ORIG_WORKING_DIR", raising=False)
    assert _model_path({"model_file": "/p/model.py", "model_relpath": "model.py"}) == "/p/model.py"
    assert _model_path({"model_file": "/p/model.py"}) == "/p/model.py"
