"""A named study on disk: its folder, its saved settings, its lock, its Optuna storage and what it holds."""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import filelock
import optuna
from optuna.trial import FrozenTrial, TrialState

from autotune.errors import StudyError
from autotune.objectives import Constraint, Objective

# Optuna user attributes that carry autotune's record of a trial (the source of truth for resume).
STATUS = "autotune.status"
POLICY = "autotune.policy"
METRICS = "autotune.metrics"
CURVES = "autotune.curves"
STOPPED_AT = "autotune.stopped_at_epoch"
ERROR = "autotune.error"
RAY_ID = "autotune.ray_trial_id"
BASELINE = "autotune.baseline"
NODE = "autotune.node"  # the Ray node id the trial ran on (its last attempt)
HOST = "autotune.host"  # hostname of that node
INTERRUPTED = "interrupted"
FINAL_STATUSES = ("finished", "stopped", "failed", "diverged")

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")


def studies_home() -> Path:
    return Path(os.environ.get("AUTOTUNE_HOME", "autotune_studies")).resolve()


@dataclass
class StudyConfig:
    """What defines a study; a resumed study must be asked for with the same settings."""

    name: str
    model_file: str
    model_sha256: str
    objectives: list[tuple[str, str]]
    constraints: list[tuple[str, str, float]]
    space_file: str
    sampler: str
    epochs: int
    trials: int
    seed: int
    early_stop: bool
    rungs: list[int]
    eta: int
    created: float = field(default_factory=time.time)
    space_sha256: str = ""  # the space by content: a study moved to another checkout still matches

    def objective_list(self) -> list[Objective]:
        return [Objective(m, d) for m, d in self.objectives]  # type: ignore[arg-type]

    def constraint_list(self) -> list[Constraint]:
        return [Constraint(m, op, b) for m, op, b in self.constraints]


@dataclass
class TrialView:
    """One finished trial as the study records it (not as the sampler was told)."""

    number: int
    status: str
    policy: dict[str, Any]
    metrics: dict[str, float]
    curves: list[dict[str, float]]
    stopped_at_epoch: int | None
    error: str | None
    ray_trial_id: str | None
    baseline: bool
    feasible: bool
    started: float | None
    ended: float | None
    node: str | None = None
    host: str | None = None


class Study:
    """The folder `<home>/<name>/`: study.json, optuna.db, ray/, spool/ and a lock."""

    def __init__(self, name: str, home: Path | None = None) -> None:
        if not _NAME.match(name):
            raise StudyError(f"Study name {name!r} is not valid.",
                             fix="use letters, digits, '.', '_' and '-' (up to 100 characters).")
        self.name = name
        self.home = home or studies_home()
        self.dir = self.home / name
        self._lock = filelock.FileLock(str(self.dir / ".lock"), timeout=0)
        self._optuna: optuna.Study | None = None

    # ---- folder and settings --------------------------------------------------------------
    @property
    def exists(self) -> bool:
        return (self.dir / "study.json").is_file()

    @property
    def storage_url(self) -> str:
        return f"sqlite:///{self.dir / 'optuna.db'}"

    @property
    def spool_dir(self) -> Path:
        return self.dir / "spool"

    @property
    def ray_dir(self) -> Path:
        return self.dir / "ray"

    def load_config(self) -> StudyConfig:
        try:
            return StudyConfig(**json.loads((self.dir / "study.json").read_text()))
        except (OSError, ValueError, TypeError) as exc:
            raise StudyError(f"Study {self.name!r} at {self.dir} has an unreadable study.json ({exc}).",
                             fix="restore the file, or start a new study with another --name.") from None

    def save_config(self, config: StudyConfig) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        tmp = self.dir / "study.json.tmp"
        tmp.write_text(json.dumps(asdict(config), indent=2))
        os.replace(tmp, self.dir / "study.json")  # atomic: a kill never leaves half a file

    @contextmanager
    def locked(self) -> Iterator[None]:
        """Only one driver per study; a second one gets a clear error instead of corrupting it."""
        self.dir.mkdir(parents=True, exist_ok=True)
        try:
            self._lock.acquire()
        except filelock.Timeout:
            raise StudyError(
                f"Study {self.name!r} is already being run by another autotune process "
                f"(lock {self.dir / '.lock'} is held).",
                fix="wait for it to finish, stop it (Ctrl-C), or use another --name.",
            ) from None
        try:
            yield
        finally:
            self._lock.release()

    # ---- Optuna -----------------------------------------------------------------------------
    def optuna_study(self, sampler: optuna.samplers.BaseSampler | None = None,
                     directions: list[str] | None = None) -> optuna.Study:
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        if directions is not None:
            self._optuna = optuna.create_study(
                study_name=self.name, storage=sqlite_storage(self.storage_url), sampler=sampler,
                directions=["maximize" if d == "max" else "minimize" for d in directions],
                load_if_exists=True)
        else:
            self._optuna = optuna.load_study(study_name=self.name,
                                             storage=sqlite_storage(self.storage_url), sampler=sampler)
        return self._optuna

    def recover_interrupted(self, study: optuna.Study) -> list[int]:
        """Trials left RUNNING by a killed driver: mark them interrupted, re-enqueue their policy once."""
        numbers = []
        for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING, TrialState.WAITING)):
            if t.state == TrialState.WAITING:
                continue  # already enqueued for a rerun by an earlier recovery
            study._storage.set_trial_user_attr(t._trial_id, STATUS, INTERRUPTED)
            study._storage.set_trial_state_values(t._trial_id, TrialState.FAIL)
            if t.params:
                study.enqueue_trial(t.params, user_attrs={"autotune.rerun_of": t.number})
            numbers.append(t.number)
        return numbers

    def trial_views(self, study: optuna.Study | None = None) -> list[TrialView]:
        study = study or self.optuna_study()
        return [v for t in study.get_trials(deepcopy=False) if (v := view(t)) is not None]


def sqlite_storage(url: str) -> optuna.storages.RDBStorage:
    """Optuna's RDB storage, on a SQLite file in WAL mode with synchronous=NORMAL (`sqlite.use_wal`):
    Optuna commits every param, attribute and state change on its own, which with SQLite's
    rollback journal made the driver's sampler time alone 2x a bare Ray Tune run of the same
    trials (scripts/bench_overhead.py)."""
    from autotune.sqlite import use_wal

    storage = optuna.storages.RDBStorage(url)
    use_wal(storage.engine)
    return storage


def view(t: FrozenTrial) -> TrialView | None:
    return view_from(t.number, t.user_attrs, t.system_attrs,
                     t.datetime_start.timestamp() if t.datetime_start else None,
                     t.datetime_complete.timestamp() if t.datetime_complete else None)


def view_from(number: int, user_attrs: dict[str, Any], system_attrs: dict[str, Any],
              started: float | None, ended: float | None) -> TrialView | None:
    """The view of a trial from what was written for it (None while it has no final status)."""
    status = user_attrs.get(STATUS)
    if status not in FINAL_STATUSES:
        return None
    constraints = system_attrs.get("constraints")
    feasible = True
    if constraints:
        feasible = all(v <= 0 for v in constraints)
    else:
        feasible = all(v <= 0 for k, v in system_attrs.items() if k.startswith("constraints:"))
    return TrialView(
        number=number, status=status, policy=dict(user_attrs.get(POLICY, {})),
        metrics={k: float(v) for k, v in (user_attrs.get(METRICS) or {}).items()},
        curves=list(user_attrs.get(CURVES) or []),
        stopped_at_epoch=user_attrs.get(STOPPED_AT), error=user_attrs.get(ERROR),
        ray_trial_id=user_attrs.get(RAY_ID), baseline=bool(user_attrs.get(BASELINE)),
        feasible=feasible, started=started, ended=ended,
        node=user_attrs.get(NODE), host=user_attrs.get(HOST),
    )


def list_study_names(home: Path | None = None) -> list[str]:
    home = home or studies_home()
    if not home.is_dir():
        return []
    return sorted(p.name for p in home.iterdir() if (p / "study.json").is_file())


# ---- fast writes: the driver's per-trial storage work (scripts/bench_overhead.py) ------------
# Optuna's RDBStorage runs two to three queries per param and per attribute (look the trial up,
# check the param's distribution against the study's, then insert) and commits each call on its
# own: ~15 ms a trial on the driver's thread, which Ray Tune's controller waits for. On an RDB
# storage these write the same rows with one statement per table and one commit; elsewhere they
# take Optuna's public path. The distributions need no check against the study's: the sampler's
# in-memory copy (searcher._sampler_copy) holds the same trials and has already checked them.


def rdb_backend(study: optuna.Study) -> Any:
    """The study's RDBStorage (under Optuna's cache), or None when it is not on a database."""
    from optuna.storages import RDBStorage

    backend = getattr(study._storage, "_backend", study._storage)
    return backend if isinstance(backend, RDBStorage) else None


def create_running(study: optuna.Study, params: dict[str, Any],
                   distributions: dict[str, Any]) -> tuple[int, int, float]:
    """Record a RUNNING trial with its params (a killed driver leaves it for recover_interrupted
    to rerun); returns its storage id, number and start time (as `view` reads it back)."""
    backend = rdb_backend(study)
    if backend is None:
        running = optuna.trial.create_trial(state=TrialState.RUNNING, params=params,
                                            distributions=distributions)
        trial_id = study._storage.create_new_trial(study._study_id, template_trial=running)
        t = study._storage.get_trial(trial_id)
        return trial_id, t.number, t.datetime_start.timestamp()
    from datetime import datetime

    import sqlalchemy as sa
    from optuna.distributions import distribution_to_json
    from optuna.storages._rdb import models

    trials, started = models.TrialModel.__table__, datetime.now()
    # SQLAlchemy Core on Optuna's tables: its ORM session (flush, identity map) was half the cost.
    with backend.engine.begin() as conn:
        # The study row's lock makes the trial's number safe against a second writer, as in
        # Optuna (SQLite locks the whole file for the transaction instead).
        studies = models.StudyModel.__table__
        conn.execute(sa.select(studies.c.study_id).where(
            studies.c.study_id == study._study_id).with_for_update())
        trial_id = conn.execute(sa.insert(trials).values(
            study_id=study._study_id, number=None, state=TrialState.RUNNING,
            datetime_start=started)).inserted_primary_key[0]
        if params:
            conn.execute(sa.insert(models.TrialParamModel.__table__), [
                {"trial_id": trial_id, "param_name": name,
                 "param_value": distributions[name].to_internal_repr(value),
                 "distribution_json": distribution_to_json(distributions[name])}
                for name, value in params.items()])
        number = conn.execute(sa.select(sa.func.count()).select_from(trials).where(
            trials.c.study_id == study._study_id, trials.c.trial_id < trial_id)).scalar_one()
        conn.execute(sa.update(trials).where(trials.c.trial_id == trial_id).values(number=number))
    cache_add = getattr(study._storage, "_add_trials_to_cache", None)
    if cache_add is not None:  # what _CachedStorage.create_new_trial would have remembered
        frozen = optuna.trial.FrozenTrial(
            number=number, state=TrialState.RUNNING, value=None, values=None, datetime_start=started,
            datetime_complete=None, params=dict(params), distributions=dict(distributions),
            user_attrs={}, system_attrs={}, intermediate_values={}, trial_id=trial_id)
        with study._storage._lock:
            cache_add(study._study_id, [frozen])
    return trial_id, number, started.timestamp()


def write_trial(study: optuna.Study, trial_id: int, user: dict[str, Any],
                constraints: dict[str, float],
                end: tuple[TrialState, list[float] | None] | None = None) -> float | None:
    """A trial's user attributes and constraint values in one transaction, and with `end` its
    final state and values too (what `Study.tell` would write in one more); returns the
    completion time written with `end` (as `view` reads it back)."""
    system = {f"constraints:{k}": float(v) for k, v in constraints.items()}
    backend = rdb_backend(study)
    if backend is None:
        for key, value in user.items():
            study._storage.set_trial_user_attr(trial_id, key, value)
        for key, value in system.items():
            study._storage.set_trial_system_attr(trial_id, key, value)
        if end is None:
            return None
        study._storage.set_trial_state_values(trial_id, end[0], end[1])
        ended = study._storage.get_trial(trial_id).datetime_complete
        return ended.timestamp() if ended else None
    from datetime import datetime

    import sqlalchemy as sa
    from optuna.storages._rdb import models

    trials = models.TrialModel.__table__
    with backend.engine.begin() as conn:
        state = conn.execute(sa.select(trials.c.state).where(
            trials.c.trial_id == trial_id).with_for_update()).scalar_one_or_none()
        if state is None:
            raise KeyError(f"No trial with trial_id {trial_id} exists.")
        backend.check_trial_is_updatable(trial_id, state)
        for model, attrs in ((models.TrialUserAttributeModel, user),
                             (models.TrialSystemAttributeModel, system)):
            if not attrs:
                continue
            table = model.__table__
            # Replace, as set_*_attr does: an enqueued rerun already carries some attributes.
            conn.execute(sa.delete(table).where(table.c.trial_id == trial_id,
                                                table.c.key.in_(list(attrs))))
            conn.execute(sa.insert(table), [
                {"trial_id": trial_id, "key": k, "value_json": json.dumps(v)}
                for k, v in attrs.items()])
        if end is None:
            return None
        # As RDBStorage.set_trial_state_values does it, the values in one statement.
        values = models.TrialValueModel.__table__
        conn.execute(sa.delete(values).where(values.c.trial_id == trial_id))
        if end[1]:
            conn.execute(sa.insert(values), [
                dict(zip(("value", "value_type"), models.TrialValueModel.value_to_stored_repr(v),
                         strict=True),
                     trial_id=trial_id, objective=objective)
                for objective, v in enumerate(end[1])])
        completed = datetime.now()
        conn.execute(sa.update(trials).where(trials.c.trial_id == trial_id).values(
            state=end[0], datetime_complete=completed))
    return completed.timestamp()
