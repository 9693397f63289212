"""Which trials a study has handed to MLflow's spool (logged.jsonl), and reconcile() logging the rest:
a fake stands in for the MLflow Recorder (this is the bookkeeping's logic; the Recorder has its own
tests in test_tracking.py)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from autotune.recording import LOGGED_FILE, StudyRecorder, logged_trials
from autotune.study import Study, TrialView


class FakeRecorder:
    def __init__(self) -> None:
        self.logged: list[int] = []

    def log_trial(self, rec: Any) -> None:
        self.logged.append(rec.trial_number)


def _view(n: int) -> TrialView:
    return TrialView(number=n, status="finished", policy={"lr": 0.01}, metrics={"accuracy": 0.5},
                     curves=[], stopped_at_epoch=None, error=None, ray_trial_id=None,
                     baseline=n == 0, feasible=True, started=1.0, ended=2.0)


def _study(tmp_path: Path) -> Study:
    study = Study("marks", home=tmp_path)
    study.dir.mkdir(parents=True)
    return study


def test_marks_are_appended_and_read_back_with_an_older_studys_list(tmp_path: Path) -> None:
    study = _study(tmp_path)
    (study.dir / "logged.json").write_text(json.dumps([0, 1]))  # a study made before logged.jsonl
    rec = StudyRecorder(study, FakeRecorder())  # type: ignore[arg-type]
    assert rec.logged == {0, 1}
    rec._mark(2)
    rec._mark(5)
    assert (study.dir / LOGGED_FILE).read_text().splitlines() == ['{"trial": 2}', '{"trial": 5}']
    assert logged_trials(study.dir) == {0, 1, 2, 5}


def test_a_line_torn_or_run_together_by_a_crash_counts_as_not_logged(tmp_path: Path) -> None:
    study = _study(tmp_path)
    # trial 3's line was cut short by a crash and trial 4's was appended right after it:
    # neither parses, so both are logged again rather than one of them taken for another trial.
    (study.dir / LOGGED_FILE).write_text('{"trial": 1}\n{"trial": 2}\n{"tri{"trial": 4}\n{"trial": 6}\n\x00\x00')
    assert logged_trials(study.dir) == {1, 2, 6}


def test_reconcile_logs_the_trials_that_are_not_marked_and_marks_them(tmp_path: Path) -> None:
    study = _study(tmp_path)
    (study.dir / LOGGED_FILE).write_text('{"trial": 0}\n{"trial": 2}\n')
    fake = FakeRecorder()
    StudyRecorder(study, fake).reconcile([_view(n) for n in range(4)])  # type: ignore[arg-type]
    assert fake.logged == [1, 3]
    assert logged_trials(study.dir) == {0, 1, 2, 3}
