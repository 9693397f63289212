"""A study's MLflow record: parent run settings, one child per trial, the front kept current, its files."""

from __future__ import annotations

import contextlib
import json
import platform
import shlex
import sys
import time
from concurrent.futures import Future, ThreadPoolExecutor
from importlib import metadata
from pathlib import Path
from typing import Any

from autotune.errors import TrackingError
from autotune.results import Front
from autotune.study import Study, StudyConfig, TrialView
from autotune.tracking import Recorder, TrialRecord, redact_uri, resolve_tracking_uri

_PACKAGES = ("autotune", "torch", "optuna", "ray", "mlflow", "torch-pruning", "numpy")


def package_versions(names: tuple[str, ...] = _PACKAGES) -> dict[str, str]:
    """Python's and the installed packages' versions (absent packages are left out)."""
    out = {"python": platform.python_version()}
    for name in names:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return out


class StudyRecorder:
    """Logs through the spooled Recorder; remembers which trials were handed over (logged.jsonl)."""

    def __init__(self, study: Study, recorder: Recorder) -> None:
        self.study = study
        self.recorder = recorder
        self._logged_path = study.dir / LOGGED_FILE
        self._front_members: frozenset[int] | None = None
        self.logged = logged_trials(study.dir)

    @classmethod
    def open(cls, study: Study, config: StudyConfig, opts: Any, mf: Any, space: Any) -> StudyRecorder:
        uri = resolve_tracking_uri(getattr(opts, "tracking_uri", None), study.home)
        rec = Recorder(uri, study.name, study.spool_dir, background=True)
        params = {
            "model_file": config.model_file, "objectives": ", ".join(f"{m}:{d}" for m, d in config.objectives),
            "constraints": ", ".join(f"{m}{op}{b:g}" for m, op, b in config.constraints) or "none",
            "sampler": config.sampler, "epochs": config.epochs, "trials": config.trials,
            "seed": config.seed, "early_stop": config.early_stop,
            "rungs": ",".join(map(str, config.rungs)) or "none", "eta": config.eta,
            "space_file": config.space_file, "model_sha256": config.model_sha256,
            **{f"space.{k}": v for k, v in space.distributions_summary().items()},
        }
        tags = {"autotune.study": study.name, "autotune.model_sha256": config.model_sha256,
                "autotune.command": redact_uri(shlex.join(["autotune", *sys.argv[1:]])),
                "autotune.optuna_study": study.name, "autotune.optuna_storage": study.storage_url,
                **{f"version.{k}": v for k, v in package_versions().items()}}
        rec.start_study(params, tags)
        space_file = Path(config.space_file)
        if space_file.is_file():  # the space as it was searched: the file may change later
            rec.log_study_summary({}, {f"search_space/{space_file.name}": space_file})
        return cls(study, rec)

    def _record(self, v: TrialView) -> TrialRecord:
        return TrialRecord(trial_number=v.number, status=v.status, params=v.policy, metrics=v.metrics,
                           curves=v.curves, stopped_at_epoch=v.stopped_at_epoch, error=v.error,
                           ray_trial_id=v.ray_trial_id, started_at=v.started, ended_at=v.ended,
                           node=v.node, host=v.host)

    def _mark(self, number: int) -> None:
        # One appended line, not the whole list rewritten (that was ~0.4 ms a trial on Ray Tune's
        # loop, scripts/bench_overhead.py). Not fsync'ed: the record itself is, in the spool,
        # before this line is written; a mark lost to a crash only makes reconcile() log the
        # trial again, which the sender applies idempotently.
        self.logged.add(number)
        with open(self._logged_path, "a", encoding="utf-8") as f:
            f.write(json.dumps({"trial": number}) + "\n")

    def reconcile(self, views: list[TrialView]) -> None:
        """Trials recorded in Optuna but never handed to MLflow (a kill in between) are logged now."""
        for v in views:
            if v.number not in self.logged:
                self.recorder.log_trial(self._record(v))
                self._mark(v.number)

    def trial(self, view: TrialView, front: Front) -> None:
        self.recorder.log_trial(self._record(view))
        self._mark(view.number)
        # A new child is created with pareto=false, so the tags only need sending when the front's
        # membership changes, and then only for the trials that join or leave it (full=False):
        # the other dominated trials' pareto_rank tags are brought up to date by finish().
        members = frozenset(n for n, r in front.ranks.items() if r == 0)
        if members != self._front_members:
            self.recorder.set_front(front.ranks, full=False)
            self._front_members = members

    def finish(self, front: Front, status: str | None = None) -> int:
        """Front tags, pareto.csv/html/png, hypervolume over trials and summary metrics on the parent;
        with `status` (FINISHED for a complete study, KILLED for one stopped before its trials were
        done, FAILED) the parent run is ended too. Then a bounded flush: returns how many records
        still wait for the tracking server (0 when everything was sent)."""
        from autotune.artifacts import write_front_files
        from autotune.results import best_within

        self.recorder.set_front(front.ranks)
        folder = self.study.dir / "pareto"
        # pareto.png is drawn by the sender process from the spooled pareto.csv (draw_front_png).
        files, picture = write_front_files(front, folder, f"Pareto front of {self.study.name}",
                                           png=False)
        drawn = {"pareto.png": {"data": "pareto.csv", "also_to": str(folder / "pareto.png"),
                                **picture}} if picture else {}
        history = front.hypervolume_history()
        # Each point is stamped with the end time of the trial that completed it (the order
        # hypervolume_history uses), so finishing the same study again adds no duplicate point.
        ended = [int((t.ended or 0) * 1000) or None for t in
                 sorted(front.eligible, key=lambda t: (t.ended or 0, t.number))]
        series = [("hypervolume", hv, ts or int(time.time() * 1000), step)
                  for (step, hv), ts in zip(history[:-1], ended, strict=False)]
        summary: dict[str, float] = {"front_size": float(len(front.members)),
                                     "trials_eligible": float(len(front.eligible))}
        if history:
            summary["hypervolume"] = history[-1][1]
        quality = front.objectives[0]
        for o in front.objectives[1:]:
            if o.direction != "min":
                continue
            # The cheapest eligible trial whose quality is within 0.5 pp (0.005 absolute) of the
            # baseline's, as a fraction of the baseline's cost: 0.4 = 2.5x cheaper.
            best = best_within(front, quality, 0.005, o.metric)
            ratio = front.ratio(best, o.metric) if best else None
            if ratio is not None:
                summary[f"best_{o.metric}_ratio_within_0.5pp"] = ratio
                summary.setdefault("best_cost_ratio", ratio)  # the first cost objective's
                summary.setdefault("best_cost_trial", float(best.number))
        self.recorder.log_study_summary(summary, files, step=history[-1][0] if history else None,
                                        timestamp_ms=ended[-1] if ended else None, series=series,
                                        drawn=drawn)
        if status is not None:
            self.recorder.end_study(status)
        try:
            return self.recorder.send_all(window_s=10)
        finally:
            self.recorder.close()

    def finish_soon(self, front: Front, status: str | None = None) -> Future[int]:
        """finish() in a thread, so that the caller can shut Ray down meanwhile (the front files
        and the sender's last records took ~2 s after the last trial, scripts/bench_overhead.py);
        the future's result is finish()'s."""
        pool = ThreadPoolExecutor(1, thread_name_prefix="autotune-finish")
        try:
            return pool.submit(self.finish, front, status)
        finally:
            pool.shutdown(wait=False)

    def unsent_message(self, left: int) -> str:
        """What to tell the user when the study ends while MLflow is unreachable."""
        from autotune.tracking import redact_uri

        return (f"[yellow]MLflow at {redact_uri(self.recorder.uri)} is unreachable: {left} "
                f"record(s) are kept in {self.recorder.spool_dir} and nothing is lost. They are "
                "sent when this study is next run (the same `autotune search` command sends them "
                "and exits).[/]")

    def fail(self) -> None:
        """The driver died of an error: the parent run says FAILED (a resume marks it RUNNING)."""
        self.recorder.end_study("FAILED")
        with contextlib.suppress(TrackingError):  # the store never opened: it stays spooled
            self.recorder.send_all(window_s=5)
        self.recorder.close()

    def ready(self) -> None:
        """Before the first trial: the store is open (TrackingError if it cannot be)."""
        self.recorder.ready()

    @property
    def tracking_uri(self) -> str:
        return self.recorder.uri


LOGGED_FILE = "logged.jsonl"  # {"trial": n} per line: the trials handed to MLflow's spool


def logged_trials(study_dir: Path) -> set[int]:
    """The trials a study has handed to MLflow's spool: logged.jsonl, and logged.json (the whole
    list, rewritten per trial) that studies made before it have. A line torn or run together by a
    crash does not parse and is left out: those trials are logged again (idempotently)."""
    out: set[int] = set()
    with contextlib.suppress(OSError, ValueError):
        out.update(json.loads((study_dir / "logged.json").read_text()))
    with contextlib.suppress(OSError):
        for line in (study_dir / LOGGED_FILE).read_text(encoding="utf-8", errors="replace").splitlines():
            with contextlib.suppress(ValueError, TypeError, KeyError):
                out.add(int(json.loads(line)["trial"]))
    return out


def artifact_paths(study: Study) -> dict[str, Path]:
    folder = study.dir / "pareto"
    return {p.name: p for p in folder.glob("pareto.*")} if folder.is_dir() else {}
