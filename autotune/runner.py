"""Ray Tune orchestration of a study: checks up front, the trainable, resources, resume and the closing summary."""

from __future__ import annotations

import functools
import logging
import math
import os
import re
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console

from autotune.contract import ModelFile, load_model_file
from autotune.errors import AutotuneError, StudyError
from autotune.objectives import (MEASURED, Constraint, Objective, check_measured, parse_constraint,
                                 parse_objective)
from autotune.policy import Policy
from autotune.study import Study, StudyConfig

_RAY_QUIET_ENV = {"RAY_USAGE_STATS_ENABLED": "0", "RAY_AIR_NEW_OUTPUT": "0", "RAY_DEDUP_LOGS": "0",
                  "RAY_TRAIN_V2_ENABLED": "0", "TUNE_DISABLE_STRICT_METRIC_CHECKING": "1"}


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


# ---- the trainable: runs inside Ray workers ----------------------------------------------------
@functools.lru_cache(maxsize=4)
def _model(path: str, sha: str) -> ModelFile:
    return load_model_file(path)


def trainable(config: dict[str, Any]) -> None:
    """One trial: train the policy and report every epoch; failures become reported statuses."""
    from ray import tune

    from autotune.trainer import train

    epoch = 0

    def report(row: dict[str, Any]) -> None:
        nonlocal epoch
        epoch = int(row.get("epoch", epoch + 1))
        out = {k: v for k, v in row.items() if isinstance(v, int | float) and not isinstance(v, bool)}
        if row.get("diverged"):
            out["autotune_status"] = "diverged"
            out["autotune_error"] = str(row.get("error") or "non-finite loss")
        elif epoch >= config["epochs"]:
            out["autotune_status"] = "finished"
        else:
            out["autotune_status"] = "running"
        tune.report(out)

    try:
        mf = _model(config["model_file"], config["model_sha256"])
        policy = Policy.from_flat(config["policy"], source="trial config")
        train(mf, policy, report=report, threads=config["threads"],
              epoch_costs=config["epoch_costs"], device=config.get("device"))
    except AutotuneError as exc:
        tune.report({"epoch": epoch + 1, "autotune_status": "failed", "autotune_error": exc.render()})
    except Exception as exc:  # the study goes on; the reason is recorded with the trial
        frame = traceback.extract_tb(exc.__traceback__)[-1]
        where = f"{Path(frame.filename).name}:{frame.lineno}"
        tune.report({"epoch": epoch + 1, "autotune_status": "failed",
                     "autotune_error": f"{type(exc).__name__}: {exc} (at {where})"})


# ---- the driver ---------------------------------------------------------------------------------
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
    diffs = [k for k in ("objectives", "constraints", "space_file", "sampler", "epochs",
                         "early_stop", "rungs", "eta")
             if _jsonable(getattr(old, k)) != _jsonable(getattr(config, k))]
    if old.model_sha256 != config.model_sha256:
        diffs.append("model file contents")
    if diffs:
        raise StudyError(
            f"Study {study.name!r} already exists with different settings ({', '.join(diffs)}); "
            f"resuming it with these would mix incomparable trials.",
            fix=f"rerun with the original settings to resume, or pick a new --name "
            f"(or delete {study.dir}).")
    old.trials = config.trials
    old.seed = old.seed
    return old


def run_search(opts: SearchOptions, console: Console | None = None) -> SearchOutcome:
    """Create or resume the study and run its remaining trials on Ray Tune."""
    console = console or Console()
    t_start = time.time()
    mf, base, objectives, constraints, space = prepare(opts)
    from autotune.scheduler import RungSchedule

    schedule = (RungSchedule.parse(opts.rungs, base.epochs) if opts.rungs
                else RungSchedule.geometric(3, opts.eta, base.epochs))
    study = Study(opts.name or default_name(mf))
    config = StudyConfig(
        name=study.name, model_file=str(mf.path), model_sha256=mf.sha256,
        objectives=[(o.metric, o.direction) for o in objectives],
        constraints=[(c.metric, c.op, c.bound) for c in constraints],
        space_file=str(Path(space.source).resolve()), sampler=opts.sampler, epochs=base.epochs,
        trials=opts.trials, seed=opts.seed, early_stop=opts.early_stop,
        rungs=list(schedule.rungs), eta=schedule.eta)
    with study.locked():
        if study.exists:
            config = _check_same(study, config)
        study.save_config(config)
        return _drive(opts, console, study, config, mf, base, objectives, constraints, space,
                      schedule, t_start)


def _drive(opts: SearchOptions, console: Console, study: Study, config: StudyConfig, mf: ModelFile,
           base: Policy, objectives: list[Objective], constraints: list[Constraint], space: Any,
           schedule: Any, t_start: float) -> SearchOutcome:
    from autotune.progress import Progress, front_table
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
        if recorder:
            recorder.finish(front, "FINISHED")
        return SearchOutcome(study, True, 0, 0.0, time.time() - t_start)
    if rerun:
        console.print(f"Resuming study {study.name}: {len(views)} trials done; "
                      f"{len(rerun)} interrupted trial(s) will run again ({rerun}).")
    ray = _init_ray(opts)
    try:
        return _tune(opts, console, study, config, mf, base, objectives, constraints, space,
                     schedule, ostudy, views, recorder, ray, t_start, Progress, front_table, compute_front)
    except Exception:
        if recorder:
            recorder.fail()  # the parent run must not stay RUNNING forever
        raise
    finally:
        ray.shutdown()


def _init_ray(opts: SearchOptions) -> Any:
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
            ray.init(address=opts.address, **kwargs)
        else:
            ray.init(**kwargs)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        raise StudyError(
            f"Could not start or join Ray{f' at {opts.address}' if opts.address else ''}: "
            f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}.",
            fix="check that `ray start --head` runs there and the address/port is right, "
            "or drop --address to use a local Ray.") from None
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


def _slots(ray: Any, opts: SearchOptions) -> int:
    res = ray.cluster_resources()
    slots = int(res.get("CPU", 1) // opts.cpus_per_trial)
    if opts.gpus_per_trial > 0:
        slots = min(slots, int(res.get("GPU", 0) // opts.gpus_per_trial))
    return max(1, slots)


def _tune(opts, console, study, config, mf, base, objectives, constraints, space, schedule,
          ostudy, views, recorder, ray, t_start, Progress, front_table, compute_front) -> SearchOutcome:  # noqa: ANN001, N803
    from ray import tune
    from ray.tune.schedulers import FIFOScheduler

    from autotune.costs import COST_METRICS
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
    progress = Progress(console, study.name, config.trials, len(views), min(slots, remaining),
                        objectives[0])

    def on_finish(view: Any) -> None:
        all_views.append(view)
        front = compute_front(all_views, objectives)
        if recorder:
            recorder.trial(view, front)
        progress.trial_ended(view.status, (view.ended or 0) - (view.started or 0), front)

    def stopped(trial_id: str) -> int | None:
        return scheduler.stopped.get(trial_id) if isinstance(scheduler, MultiObjectiveASHA) else None

    searcher = PolicySearcher(
        study=ostudy, space=space, base=base, objectives=objectives, constraints=constraints,
        baseline_needed=not any(v.baseline for v in views), on_finish=on_finish,
        stopped_by_scheduler=stopped,
        trial_config={"model_file": str(mf.path), "model_sha256": mf.sha256, "epochs": base.epochs,
                      "threads": max(1, int(opts.cpus_per_trial)), "epoch_costs": epoch_costs,
                      "device": "cuda" if opts.gpus_per_trial > 0 else "cpu"})

    refresh = _refresh_callback(lambda: progress.refresh(running=len(searcher.live)))

    resources = {"cpu": opts.cpus_per_trial, "gpu": opts.gpus_per_trial}
    tuner = tune.Tuner(
        tune.with_resources(trainable, resources),
        tune_config=tune.TuneConfig(search_alg=searcher, scheduler=scheduler, num_samples=remaining,
                                    max_concurrent_trials=min(slots, remaining),
                                    time_budget_s=opts.time_budget_s, reuse_actors=True),
        run_config=tune.RunConfig(
            name=f"run-{int(time.time())}", storage_path=str(study.ray_dir), verbose=1 if opts.verbose else 0,
            callbacks=[refresh], log_to_file=True,
            failure_config=tune.FailureConfig(max_failures=opts.max_failures),
            stop=({"time_total_s": opts.trial_timeout_s} if opts.trial_timeout_s else None)),
    )
    interrupted = False
    with progress:
        try:
            tuner.fit()
        except KeyboardInterrupt:
            interrupted = True
        finally:
            searcher.abandon_running()
    final_views = study.trial_views(ostudy)
    front = compute_front(final_views, objectives)
    complete = len(final_views) >= config.trials
    if recorder:
        recorder.finish(front, "FINISHED" if complete else "KILLED")
    console.print(front_table(front, f"Pareto front of {study.name} ({len(final_views)} trials)"))
    _summary(console, final_views, front, objectives)
    if not complete:
        cmd = " ".join(["autotune", *sys.argv[1:]]) if sys.argv and sys.argv[0].endswith("autotune") else "the same command"
        reason = "interrupted" if interrupted else "stopped before its trials were done (time budget?)"
        console.print(f"[yellow]Study {study.name} {reason}: {len(final_views)}/{config.trials} trials "
                      f"done. Resume with: {cmd}[/]")
    return SearchOutcome(study, complete, len(final_views) - len(views), searcher.sampler_seconds,
                         time.time() - t_start)


def _refresh_callback(fn: Any) -> Any:
    """A Tune callback that redraws the progress panel on every controller step."""
    from ray import tune

    global _Refresh
    if "_Refresh" not in globals():

        class _Refresh(tune.Callback):  # module-level so cloudpickle pickles it by reference
            fn: Any = None

            def __getstate__(self) -> dict[str, Any]:
                return {}  # Ray pickles callbacks with the experiment; the display stays here

            def on_step_end(self, iteration: int, trials: list, **info: Any) -> None:
                if self.fn is not None:
                    self.fn()

        _Refresh.__qualname__ = "_Refresh"
        globals()["_Refresh"] = _Refresh
    cb = globals()["_Refresh"]()
    cb.fn = fn
    return cb


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
