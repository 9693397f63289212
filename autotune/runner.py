"""Ray Tune orchestration of a study: checks up front, resources, resume and the closing summary."""

from __future__ import annotations

import hashlib
import logging
import math
import os
import re
import shlex
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console

from autotune.contract import ModelFile, load_model_file
from autotune.envvars import scoped_env
from autotune.errors import StudyError
from autotune.objectives import (
    MEASURED,
    Constraint,
    Objective,
    check_measured,
    parse_constraint,
    parse_objective,
)
from autotune.policy import Policy
from autotune.study import Study, StudyConfig
from autotune.tracking import discard_standby_sender, redact_uri, start_standby_sender
from autotune.trainable import trainable

_RAY_QUIET_ENV = {"RAY_USAGE_STATS_ENABLED": "0", "RAY_AIR_NEW_OUTPUT": "0", "RAY_DEDUP_LOGS": "0",
                  "RAY_TRAIN_V2_ENABLED": "0", "TUNE_DISABLE_STRICT_METRIC_CHECKING": "1",
                  "TUNE_DISABLE_SIGINT_HANDLER": "1"}


@dataclass
class SearchOptions:
    model_file: Path
    trials: int = 30
    epochs: int | None = None
    name: str | None = None
    space: Path | None = None
    objectives: list[str] = field(default_factory=list)
    constraints: list[str] = field(default_factory=list)
    sampler: str = "tpe"
    cpus_per_trial: float = 1.0
    gpus_per_trial: float = 0.0
    address: str | None = None
    time_budget_s: float | None = None
    seed: int = 0
    early_stop: bool = True
    rungs: str | None = None
    eta: int = 3
    verbose: bool = False
    tracking_uri: str | None = None
    tracking: bool = True
    max_failures: int = 1
    trial_timeout_s: float | None = None
    storage: str | None = None  # Ray's experiment storage: a path or a pyarrow URI (s3://, gs://, file://)


@dataclass
class SearchOutcome:
    study: Study
    complete: bool
    finished_now: int
    sampler_seconds: float = 0.0
    wall_s: float = 0.0


def parse_duration(text: str | None) -> float | None:
    """'90', '90s', '30m', '1.5h' → seconds."""
    if text is None:
        return None
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*", text)
    if not m or float(m.group(1)) <= 0:
        raise StudyError(f"--time-budget {text!r} is not a positive duration.",
                         fix="write e.g. 90s, 30m or 1.5h.")
    return float(m.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}[m.group(2)]


# ---- the driver --------------------------------------------------------------------------------
def prepare(opts: SearchOptions) -> tuple[ModelFile, Policy, list[Objective], list[Constraint], Any]:
    """Everything that can be refused is refused here, before Ray starts or the study is touched."""
    from autotune.costs import EnergyMeter
    from autotune.runs import default_policy
    from autotune.space import SearchSpace, find_default_space

    if opts.trials < 1:
        raise StudyError(f"--trials must be at least 1, but got {opts.trials}.", fix="pass --trials 30.")
    if opts.epochs is not None and opts.epochs < 1:
        raise StudyError(f"--epochs must be at least 1, but got {opts.epochs}.", fix="pass --epochs 10.")
    if opts.cpus_per_trial <= 0 or opts.gpus_per_trial < 0:
        raise StudyError("--cpus-per-trial must be > 0 and --gpus-per-trial >= 0.",
                         fix="e.g. --cpus-per-trial 1 --gpus-per-trial 0.25")
    if opts.storage:
        opts.storage = check_storage(opts.storage)
    from autotune.sampler import make_sampler

    make_sampler(opts.sampler, n_trials=opts.trials, seed=opts.seed)  # an unknown name is refused
    if opts.address:
        _check_reachable(opts.address)
    elif opts.gpus_per_trial > 0 and _local_gpus() < opts.gpus_per_trial:
        raise StudyError(  # refused before the study is touched (the cluster check comes later)
            f"--gpus-per-trial {opts.gpus_per_trial:g} asks for GPUs, but this machine has "
            f"{_local_gpus()} CUDA GPU(s).",
            fix="drop --gpus-per-trial (trials run on CPU), or join a cluster with GPUs (--address).")
    mf = load_model_file(opts.model_file)
    base = default_policy(mf)
    if opts.epochs is not None:
        base = base.with_overrides({"epochs": opts.epochs}, source="--epochs")
    objectives = ([parse_objective(o) for o in opts.objectives] if opts.objectives
                  else [Objective(*mf.objective), Objective("train_time_s", "min")])  # type: ignore[arg-type]
    if len({o.metric for o in objectives}) != len(objectives):
        raise StudyError(f"--objective names a metric twice: {[str(o) for o in objectives]}.",
                         fix="give each metric once.")
    constraints = [parse_constraint(c) for c in opts.constraints]
    space_path = opts.space or find_default_space(mf.path, str(mf.search_space) if mf.search_space else None)
    space = SearchSpace.load(space_path).fix({"epochs": base.epochs})
    space.check_samples(base, n=100, seed=opts.seed)
    available = [*MEASURED]
    if not mf.custom_loop:
        available += _quality_metrics(mf, base)
    energy = opts.gpus_per_trial > 0 or EnergyMeter(_torch_device("cpu"))._read is not None
    check_measured([o.metric for o in objectives], available, "--objective", mf.custom_loop, energy)
    check_measured([c.metric for c in constraints], available, "--constraint", mf.custom_loop, energy)
    if opts.gpus_per_trial == 0 and _space_has(space, "precision", "fp16"):
        raise StudyError(
            f"Search space {space_path} can choose precision=fp16, which needs a CUDA GPU, "
            "but trials run without one (--gpus-per-trial 0).",
            fix="remove fp16 from `precision` in the space, or pass --gpus-per-trial.")
    return mf, base, objectives, constraints, space


def check_storage(uri: str) -> str:
    """--storage: a path (made absolute) or a URI that pyarrow opens (s3://, gs://, abfs://, file://)."""
    if "://" not in uri:
        return str(Path(uri).expanduser().resolve())
    try:
        import pyarrow.fs

        pyarrow.fs.FileSystem.from_uri(uri)
    except Exception as exc:  # noqa: BLE001 - unknown scheme, missing credentials, bad bucket
        raise StudyError(
            f"--storage {uri}: pyarrow cannot open it ({type(exc).__name__}: "
            f"{str(exc).splitlines()[0] if str(exc) else ''}).",
            fix="pass a shared path (/mnt/shared/ray) or a URI pyarrow supports (s3://bucket/path, "
            "gs://bucket/path, file:///mnt/shared/ray) with its credentials in the environment.",
        ) from None
    return uri


def _local_gpus() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def _torch_device(name: str) -> Any:
    import torch

    return torch.device(name)


def _space_has(space: Any, key: str, value: Any) -> bool:
    return any(p.key == key and value in p.choices for p in space.params)


def _quality_metrics(mf: ModelFile, base: Policy) -> list[str]:
    """Run model.py once on two samples: catches contract mistakes and lists the metrics it returns."""
    import torch

    from autotune.errors import ContractError
    from autotune.trainer import _first

    train_ds, val_ds = mf.datasets()
    model = mf.build_model(base.model)
    x, y = _first(val_ds, 2)
    try:
        with torch.no_grad():
            out = model(x)
        mf.loss(out, y)
    except Exception as exc:
        raise ContractError(
            f"{mf.path}: the model could not run on two validation samples: {type(exc).__name__}: {exc}.",
            fix="check that build_model's input shape matches what datasets() returns, and loss_fn.",
        ) from None
    metrics = mf.metrics(out, y)
    if mf.quality_metric not in metrics:
        raise ContractError(
            f"{mf.path}: OBJECTIVE names {mf.quality_metric!r}, but metrics() returns only "
            f"{sorted(metrics)}.", fix="make OBJECTIVE name a metric that metrics() returns.")
    return [*metrics, "val_loss"]


def default_name(mf: ModelFile) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "-", mf.path.parent.name or mf.path.stem)


def _jsonable(value: Any) -> Any:
    import json

    return json.loads(json.dumps(value))  # tuples and lists compare equal, as study.json stores them


def _check_same(study: Study, config: StudyConfig) -> StudyConfig:
    """A resumed study must be asked for with the settings it was created with (trials may grow)."""
    old = study.load_config()
    keys = ["objectives", "constraints", "sampler", "epochs", "early_stop", "rungs", "eta"]
    # The space by content where both know it: the same study resumed from another machine or
    # checkout (a shared AUTOTUNE_HOME) has other absolute paths but the same files.
    keys.append("space_sha256" if old.space_sha256 and config.space_sha256 else "space_file")
    diffs = [k for k in keys if _jsonable(getattr(old, k)) != _jsonable(getattr(config, k))]
    if old.model_sha256 != config.model_sha256:
        diffs.append("model file contents")
    if diffs:
        raise StudyError(
            f"Study {study.name!r} already exists with different settings ({', '.join(diffs)}); "
            f"resuming it with these would mix incomparable trials.",
            fix=f"rerun with the original settings to resume, or pick a new --name "
            f"(or delete {study.dir}).")
    old.trials = config.trials  # the one setting a resumed study may change: it can grow
    # Same contents (checked above), maybe another path: record where the files are now.
    old.model_file, old.space_file = config.model_file, config.space_file
    old.space_sha256 = config.space_sha256
    return old


def run_search(opts: SearchOptions, console: Console | None = None) -> SearchOutcome:
    """Create or resume the study and run its remaining trials on Ray Tune."""
    if opts.tracking:
        # The MLflow sender imports MLflow (~1.6 s of CPU) while this imports the model, Ray Tune
        # and Optuna (single-threaded, a core left idle), not beside Ray's start-up.
        start_standby_sender()
    try:
        return _search(opts, console or Console())
    finally:
        discard_standby_sender()  # if no study took it (an error came first)


def _search(opts: SearchOptions, console: Console) -> SearchOutcome:
    t_start = time.time()
    mf, base, objectives, constraints, space = prepare(opts)
    from autotune.scheduler import RungSchedule

    schedule = (RungSchedule.parse(opts.rungs, base.epochs) if opts.rungs
                else RungSchedule.default(opts.eta, base.epochs))
    study = Study(opts.name or default_name(mf))
    if not opts.rungs and study.exists:
        # A study resumes with the default rungs it was created with (the default has changed:
        # it was 3·3ᵏ before docs/BENCHMARKS.md's search benchmark moved it).
        made = study.load_config()
        if made.rungs and made.eta == opts.eta and made.epochs == base.epochs:
            schedule = RungSchedule(rungs=tuple(made.rungs), max_epochs=base.epochs, eta=made.eta)
    config = StudyConfig(
        name=study.name, model_file=str(mf.path), model_sha256=mf.sha256,
        objectives=[(o.metric, o.direction) for o in objectives],
        constraints=[(c.metric, c.op, c.bound) for c in constraints],
        space_file=str(Path(space.source).resolve()), sampler=opts.sampler, epochs=base.epochs,
        trials=opts.trials, seed=opts.seed, early_stop=opts.early_stop,
        rungs=list(schedule.rungs), eta=schedule.eta,
        space_sha256=hashlib.sha256(Path(space.source).read_bytes()).hexdigest())
    with study.locked():
        if study.exists:
            config = _check_same(study, config)
        study.save_config(config)
        return _drive(opts, console, study, config, mf, base, objectives, constraints, space,
                      schedule, t_start)


def _drive(opts: SearchOptions, console: Console, study: Study, config: StudyConfig, mf: ModelFile,
           base: Policy, objectives: list[Objective], constraints: list[Constraint], space: Any,
           schedule: Any, t_start: float) -> SearchOutcome:
    from autotune.progress import front_table
    from autotune.recording import StudyRecorder
    from autotune.results import compute_front
    from autotune.sampler import make_sampler

    sampler = make_sampler(config.sampler, n_trials=config.trials, seed=config.seed)
    ostudy = study.optuna_study(sampler, [o.direction for o in objectives])
    rerun = study.recover_interrupted(ostudy)
    views = study.trial_views(ostudy)
    recorder = StudyRecorder.open(study, config, opts, mf, space) if opts.tracking else None
    if recorder:
        recorder.reconcile(views)
    if len(views) >= config.trials:
        front = compute_front(views, objectives)
        console.print(f"Study [bold]{study.name}[/] is complete: {len(views)} of {config.trials} "
                      f"trials done. Pass a larger --trials to continue it.")
        console.print(front_table(front, f"Pareto front of {study.name}"))
        if recorder and (left := recorder.finish(front, "FINISHED")):
            console.print(recorder.unsent_message(left), highlight=False, soft_wrap=True)
        return SearchOutcome(study, True, 0, 0.0, time.time() - t_start)
    if rerun:
        console.print(f"Resuming study {study.name}: {len(views)} trials done; "
                      f"{len(rerun)} interrupted trial(s) will run again ({rerun}).")
    ray = _init_ray(opts, _runtime_env(opts, mf, study))
    try:
        if recorder:
            recorder.ready()
        return _tune(opts, console, study, config, mf, base, objectives, constraints, space,
                     schedule, ostudy, views, recorder, ray, t_start)
    except Exception:
        if recorder:
            recorder.fail()  # the parent run must not stay RUNNING forever
        raise
    finally:
        ray.shutdown()


_SHIP_EXCLUDES = [".git", ".venv", "venv", "__pycache__", "*.pyc", "autotune_studies", "mlruns",
                  "mlflow.db", "*.ckpt", ".ipynb_checkpoints"]


def _runtime_env(opts: SearchOptions, mf: ModelFile, study: Study) -> dict[str, Any] | None:
    """On a cluster (--address), ship the model's folder (model.py, its sibling modules and data
    files) as Ray's working_dir, and autotune itself as a py_module so workers run the driver's
    version. A local Ray needs neither: its workers see the driver's files."""
    if not opts.address:
        return None
    import autotune

    excludes = list(_SHIP_EXCLUDES)
    try:  # a studies home inside the model's folder is never shipped
        excludes.append("/" + study.home.relative_to(mf.path.parent).as_posix())
    except ValueError:
        pass
    return {"working_dir": str(mf.path.parent), "excludes": excludes,
            "py_modules": [str(Path(autotune.__file__).parent)]}


def _init_ray(opts: SearchOptions, runtime_env: dict[str, Any] | None = None) -> Any:
    for k, v in _RAY_QUIET_ENV.items():
        os.environ.setdefault(k, v)
    import ray

    if not opts.verbose:
        logging.getLogger("ray").setLevel(logging.ERROR)
    kwargs: dict[str, Any] = dict(include_dashboard=False, log_to_driver=opts.verbose,
                                  logging_level=logging.INFO if opts.verbose else logging.ERROR,
                                  configure_logging=True, ignore_reinit_error=True)
    try:
        if opts.address:
            ray.init(address=opts.address, runtime_env=runtime_env, **kwargs)
        else:
            ray.init(**kwargs)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        raise StudyError(
            f"Could not start or join Ray{f' at {opts.address}' if opts.address else ''}: "
            f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}.",
            fix="check that `ray start --head` runs there and the address/port is right, and that "
            "this shell has the cluster's auth token (RAY_AUTH_TOKEN or ~/.ray/auth_token, from "
            "`ray get-auth-token` on the head), or drop --address to use a local Ray.") from None
    resources = ray.cluster_resources()
    if opts.gpus_per_trial > 0 and resources.get("GPU", 0) < opts.gpus_per_trial:
        ray.shutdown()
        raise StudyError(
            f"--gpus-per-trial {opts.gpus_per_trial} asks for GPUs, but the Ray cluster has "
            f"{resources.get('GPU', 0):g}.",
            fix="drop --gpus-per-trial (trials run on CPU), or join a cluster with GPUs (--address).")
    if resources.get("CPU", 0) < opts.cpus_per_trial:
        ray.shutdown()
        raise StudyError(
            f"--cpus-per-trial {opts.cpus_per_trial:g} exceeds the cluster's {resources.get('CPU', 0):g} CPUs.",
            fix="lower --cpus-per-trial.")
    return ray


def _check_reachable(address: str, timeout_s: float = 5.0) -> None:
    """Ray retries an unreachable GCS for minutes; a HOST:PORT that refuses TCP is refused now."""
    import socket

    m = re.fullmatch(r"(?:ray://)?\[?([^\[\]]+?)\]?:(\d+)", address.strip())
    if m is None:
        return  # "auto", "local": Ray answers those quickly itself
    host, port = m.group(1), int(m.group(2))
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            return
    except OSError as exc:
        raise StudyError(
            f"--address {address}: nothing answers at {host}:{port} ({exc.strerror or exc}).",
            fix="start the cluster there (`ray start --head --port PORT`) and check the host, port "
            "and firewall, or drop --address to use a local Ray.") from None


def _slots(ray: Any, opts: SearchOptions) -> int:
    res = ray.cluster_resources()

    def fit(total: float, per: float) -> int:  # 1 // 0.1 is 9.0 in floats; Ray counts in 1e-4
        return int(math.floor(total / per + 1e-6))

    slots = fit(res.get("CPU", 1), opts.cpus_per_trial)
    if opts.gpus_per_trial > 0:
        slots = min(slots, fit(res.get("GPU", 0), opts.gpus_per_trial))
    return max(1, slots)


def _tune(opts, console, study, config, mf, base, objectives, constraints, space, schedule,
          ostudy, views, recorder, ray, t_start) -> SearchOutcome:  # noqa: ANN001
    from ray import tune
    from ray.tune.schedulers import FIFOScheduler

    from autotune.costs import COST_METRICS
    from autotune.progress import Progress, front_table
    from autotune.results import compute_front
    from autotune.scheduler import MultiObjectiveASHA
    from autotune.searcher import PolicySearcher

    all_views = list(views)
    remaining = config.trials - len(views)
    slots = _slots(ray, opts)
    needed = {o.metric for o in objectives} | {c.metric for c in constraints}
    epoch_costs = sorted(needed & set(COST_METRICS) - {"train_time_s", "train_flops", "energy_j", "peak_mem_mb"}
                         | (needed & {"infer_flops"}))
    scheduler = (MultiObjectiveASHA([(o.metric, o.direction) for o in objectives], schedule,
                                    state_path=study.dir / "scheduler.json")
                 if config.early_stop and schedule.rungs else FIFOScheduler())

    def spent() -> float:
        """Share of the study's budget spent: trials done / trials, or of --time-budget if more."""
        done = len(all_views) / max(1, config.trials)
        if opts.time_budget_s:
            done = max(done, (time.time() - t_start) / opts.time_budget_s)
        return done

    if isinstance(scheduler, MultiObjectiveASHA):
        scheduler.set_progress(spent())  # late in the study it promotes more (scheduler.py)

    ctrl_c = _CtrlC()

    def on_finish(view: Any) -> None:
        all_views.append(view)
        if _all_failed(all_views):
            searcher.finished = True  # no new trials: the study is not going to work as it is
        front = compute_front(all_views, objectives)
        if recorder:
            recorder.trial(view, front)
        progress.trial_ended(view.status, (view.ended or 0) - (view.started or 0), front)
        if isinstance(scheduler, MultiObjectiveASHA):
            scheduler.set_progress(spent())
        ctrl_c.check()

    def stop(trial_id: str, result: dict[str, Any]) -> bool:
        ctrl_c.check()
        return _stop_ended_trial(trial_id, result)

    def stopped(trial_id: str) -> int | None:
        return scheduler.stopped.get(trial_id) if isinstance(scheduler, MultiObjectiveASHA) else None

    searcher = PolicySearcher(
        study=ostudy, space=space, base=base, objectives=objectives, constraints=constraints,
        baseline_needed=not any(v.baseline for v in views), on_finish=on_finish,
        stopped_by_scheduler=stopped,
        trial_config={"model_file": str(mf.path), "model_sha256": mf.sha256, "epochs": base.epochs,
                      "model_relpath": mf.path.name if opts.address else None,
                      "threads": max(1, int(opts.cpus_per_trial)), "epoch_costs": epoch_costs,
                      "device": "cuda" if opts.gpus_per_trial > 0 else "cpu",
                      "trial_timeout_s": opts.trial_timeout_s})

    progress = Progress(console, study.name, config.trials, len(views), min(slots, remaining),
                        objectives[0], running=lambda: len(searcher.live))
    resources = {"cpu": opts.cpus_per_trial, "gpu": opts.gpus_per_trial}
    tuner = tune.Tuner(
        tune.with_resources(trainable, resources),
        tune_config=tune.TuneConfig(search_alg=searcher, scheduler=scheduler, num_samples=remaining,
                                    max_concurrent_trials=min(slots, remaining),
                                    time_budget_s=opts.time_budget_s,
                                    # a timed-out trial's worker may be ended: never reuse it
                                    reuse_actors=not opts.trial_timeout_s),
        run_config=tune.RunConfig(
            name=f"run-{int(time.time())}", verbose=1 if opts.verbose else 0,
            storage_path=_ray_storage(opts, study),
            log_to_file=True,
            failure_config=tune.FailureConfig(max_failures=opts.max_failures),
            stop=stop),
    )
    interrupted = False
    with progress:
        try:
            # Tune's own SIGINT handler (TUNE_DISABLE_SIGINT_HANDLER=0) would stop trials one by
            # one and save Ray's experiment state, which autotune does not use: Ctrl-C raises
            # here instead, live trials are marked interrupted and ray.shutdown() ends them.
            with scoped_env(_ray_result_loggers()), ctrl_c:
                tuner.fit()
        except KeyboardInterrupt:
            interrupted = True
        finally:
            searcher.abandon_running()
            if isinstance(scheduler, MultiObjectiveASHA):
                scheduler.flush()
    interrupted = interrupted or ctrl_c.pressed
    final_views = study.trial_views(ostudy)
    front = compute_front(final_views, objectives)
    complete = len(final_views) >= config.trials
    finishing = recorder.finish_soon(front, "FINISHED" if complete else "KILLED") if recorder else None
    ray.shutdown()  # (again in _drive: a no-op) Ray's processes end while MLflow gets the last records
    if finishing and (left := finishing.result()):
        console.print(recorder.unsent_message(left), highlight=False, soft_wrap=True)
    console.print(front_table(front, f"Pareto front of {study.name} ({len(final_views)} trials)"))
    _summary(console, final_views, front, objectives)
    if not interrupted and not complete and _all_failed(final_views):
        raise _all_failed_error(study, config, final_views)
    if not complete:
        cmd = (redact_uri(shlex.join(["autotune", *sys.argv[1:]]))
               if sys.argv and sys.argv[0].endswith(("autotune", "__main__.py")) else "the same command")
        reason = "interrupted" if interrupted else "stopped before its trials were done (time budget?)"
        console.print(f"[yellow]Study {study.name} {reason}: {len(final_views)}/{config.trials} trials "
                      f"done. Resume with: {cmd}[/]")
    return SearchOutcome(study, complete, len(final_views) - len(views), searcher.sampler_seconds,
                         time.time() - t_start)


# Ray Tune's default result loggers less TensorBoard's: autotune records trials in its study and in
# MLflow, and the TBX logger (a SummaryWriter with its own thread per trial, an event-file flush per
# result) cost ~1.3 s of the driver's CPU per 200 no-op trials, on the Tune loop that is the study's
# critical path (scripts/bench_overhead.py). CSV and JSON stay: Ray's ExperimentAnalysis reads them.
# Ray's own switches do it: TUNE_DISABLE_AUTO_CALLBACK_LOGGERS drops all three and RAY_TUNE_CALLBACKS
# adds callbacks by class name (unlike a callback passed to Tune, without a telemetry import:
# progress.Progress). A user's RAY_TUNE_CALLBACKS is kept, e.g. ray.tune.logger.TBXLoggerCallback.
_RAY_FILE_LOGGERS = ("ray.tune.logger.CSVLoggerCallback", "ray.tune.logger.JsonLoggerCallback")


def _ray_result_loggers() -> dict[str, str]:
    """The environment Tuner.fit reads its default callbacks from (see _RAY_FILE_LOGGERS)."""
    if os.environ.get("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS") == "1":
        return {}  # the user has turned Ray's loggers off
    theirs = [c.strip() for c in os.environ.get("RAY_TUNE_CALLBACKS", "").split(",") if c.strip()]
    return {"TUNE_DISABLE_AUTO_CALLBACK_LOGGERS": "1",
            "RAY_TUNE_CALLBACKS": ",".join(theirs + [c for c in _RAY_FILE_LOGGERS if c not in theirs])}


def _ray_storage(opts: SearchOptions, study: Study) -> str:
    """Ray's experiment folders (logs, results; autotune keeps no checkpoints): the study's ray/
    folder, or --storage (a shared path or object-store URI) under the study's name."""
    if not opts.storage:
        return str(study.ray_dir)
    return opts.storage.rstrip("/") + "/" + study.name


ALL_FAILED_AFTER = 5  # a study whose first trials all fail stops instead of burning its budget


def _all_failed(views: list[Any]) -> bool:
    return (len(views) >= ALL_FAILED_AFTER
            and all(v.status in ("failed", "diverged") for v in views))


def _all_failed_error(study: Study, config: StudyConfig, views: list[Any]) -> StudyError:
    from collections import Counter

    def gist(error: str | None) -> str:
        return re.sub(r"\s+", " ", (error or "no reason recorded")).strip()[:300]

    common, times = Counter(gist(v.error) for v in views).most_common(1)[0]
    return StudyError(
        f"Study {study.name!r} stopped early: all {len(views)} trials so far failed or diverged "
        f"(the most common reason, {times} of {len(views)}: {common}), so its remaining "
        f"{config.trials - len(views)} trials were not run.",
        fix=f"fix the cause in {config.model_file} or the search space, then start a new study "
        f"(--name, or delete {study.dir}); every trial's error is in MLflow and in Optuna.")


class _CtrlC:
    """Ctrl-C while Ray Tune runs. Python raises KeyboardInterrupt wherever the main thread is, and
    one raised inside a weakref callback or a __del__ is printed and dropped: the study then ran to
    its end and exited 0 (seen once in tests/test_reliability.py). The handler also remembers it;
    Tune's loop raises it again at the next result or trial end (check())."""

    def __init__(self) -> None:
        self.pressed = False
        self._previous: Any = None

    def __enter__(self) -> _CtrlC:
        # Only where Ctrl-C would raise anyway: the main thread, with Python's default handler
        # (not a caller's own, nor SIG_IGN under nohup).
        if (threading.current_thread() is threading.main_thread()
                and signal.getsignal(signal.SIGINT) is signal.default_int_handler):
            self._previous = signal.signal(signal.SIGINT, self._on_sigint)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)
            self._previous = None

    def _on_sigint(self, signum: int, frame: Any) -> None:
        self.pressed = True
        raise KeyboardInterrupt

    def check(self) -> None:
        if self.pressed:
            raise KeyboardInterrupt


def _stop_ended_trial(trial_id: str, result: dict[str, Any]) -> bool:
    """Tune stop criterion: a trial that reported its end (failed, timed out, diverged) stops now,
    even if its thread is still running (a hang the watchdog caught)."""
    return result.get("autotune_status") in ("failed", "diverged")


def _summary(console: Console, views: list[Any], front: Any, objectives: list[Objective]) -> None:
    counts: dict[str, int] = {}
    for v in views:
        counts[v.status] = counts.get(v.status, 0) + 1
    parts = [f"{n} {s}" for s, n in sorted(counts.items())]
    hv = front.hypervolume()
    console.print(f"trials: {', '.join(parts)} · front: {len(front.members)} · hypervolume {hv:.4g}")
    failures = [v for v in views if v.status in ("failed", "diverged")]
    for v in failures[:5]:
        console.print(f"  trial {v.number} {v.status}: {(v.error or '')[:200]}")
    knee = front.knee()
    if knee is not None and front.baseline is not None:
        q = objectives[0]
        dq = knee.metrics[q.metric] - front.baseline.metrics[q.metric]
        ratios = [f"{o.metric} {r:.2f}×" for o in objectives[1:]
                  if (r := front.ratio(knee, o.metric)) is not None and math.isfinite(r)]
        console.print(f"knee: trial {knee.number}, {q.metric} {dq:+.4g} vs baseline, "
                      f"{', '.join(ratios)} of the baseline's cost")
