"""Orchestration overhead on a no-op trainable (issue 6): autotune search vs bare Ray Tune, sampler time
vs raw Optuna ask/tell, MLflow on vs off.

    .venv/bin/python scripts/bench_overhead.py --trials 200 --json /tmp/overhead.json

Every variant runs the same 200 trials of scripts/bench_models/noop/model.py's work (3 epochs of
synthetic metrics, no torch), 2 CPUs (2 concurrent trials), in one process after another; the
variants are interleaved over --rounds so that machine noise hits each side alike.

The peer is the same Tune set-up: 1 CPU per trial, max_concurrent_trials=2, reuse_actors=True,
one tune.report per epoch (3 per trial), Ray's default result loggers, a fresh ray.init and
ray.shutdown inside the timed span, Optuna's TPE as autotune builds it over the same space. The
driver-side imports (torch, Ray Tune, Optuna, autotune) are done once before anything is timed.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent / "bench_models" / "noop"))
from benchlib import ROOT, command, machine, versions  # noqa: E402

NOOP = ROOT / "scripts" / "bench_models" / "noop" / "model.py"
SPACE = NOOP.parent / "space.yaml"


def _quiet() -> None:
    from autotune.runner import _RAY_QUIET_ENV

    for k, v in _RAY_QUIET_ENV.items():
        os.environ.setdefault(k, v)


def run_autotune(trials: int, tracking: bool, seed: int) -> dict:
    from rich.console import Console

    from autotune.runner import SearchOptions, run_search

    home = tempfile.mkdtemp(prefix="bench-overhead-")
    os.environ["AUTOTUNE_HOME"] = home
    opts = SearchOptions(model_file=NOOP, trials=trials, name=f"noop-{seed}", seed=seed,
                         tracking=tracking, cpus_per_trial=1.0,
                         tracking_uri=f"sqlite:///{home}/mlflow.db" if tracking else None)
    t0 = time.perf_counter()
    out = run_search(opts, console=Console(file=open(os.devnull, "w")))
    wall = time.perf_counter() - t0
    assert out.complete, "the no-op study did not finish its trials"
    return {"wall_s": wall, "sampler_s_per_trial": out.sampler_seconds / trials}


def run_cli(trials: int, tracking: bool, seed: int) -> dict:
    """`autotune search` as a user runs it, in a process of its own: its imports, the MLflow
    sender it starts before them (tracking.start_standby_sender) and its exit are in the span."""
    home = tempfile.mkdtemp(prefix="bench-overhead-cli-")
    cmd = [sys.executable, "-m", "autotune", "search", str(NOOP), "--trials", str(trials),
           "--name", f"noop-cli-{seed}", "--seed", str(seed), "--cpus-per-trial", "1",
           *(["--tracking-uri", f"sqlite:///{home}/mlflow.db"] if tracking else ["--no-tracking"])]
    t0 = time.perf_counter()
    done = subprocess.run(cmd, env={**os.environ, "AUTOTUNE_HOME": home}, stdout=subprocess.DEVNULL,
                          stderr=subprocess.PIPE, check=False)
    wall = time.perf_counter() - t0
    assert done.returncode == 0, done.stderr.decode(errors="replace")[-2000:]
    return {"wall_s": wall}


def _define_by_run(trial):  # noqa: ANN001, ANN202 - module level: OptunaSearch pickles it
    from autotune.space import SearchSpace

    SearchSpace.load(SPACE).suggest(trial) if _SPACE is None else _SPACE.suggest(trial)


_SPACE = None


def run_bare_ray(trials: int, seed: int, loggers: str = "default") -> dict:
    """A bare Ray Tune Tuner: OptunaSearch (same sampler kind and space) over the same work; with
    loggers="autotune", Ray's result loggers as autotune sets them (CSV and JSON, no TensorBoard)."""
    import logging

    _quiet()
    import ray
    from model import metrics_at  # scripts/bench_models/noop/model.py
    from ray import tune
    from ray.tune.search.optuna import OptunaSearch

    from autotune.sampler import make_sampler
    from autotune.space import SearchSpace

    # Ray's workers inherit the driver's environment: let them import the no-op model too.
    os.environ["PYTHONPATH"] = os.pathsep.join(
        [str(NOOP.parent), *filter(None, [os.environ.get("PYTHONPATH")])])

    def fn(config: dict) -> None:
        lr, bs = config["optimizer.lr"], config["batch_size"]
        for epoch in range(1, 4):
            tune.report({"epoch": epoch, **metrics_at(lr, bs, config["optimizer.weight_decay"], epoch)})

    t0 = time.perf_counter()
    ray.init(include_dashboard=False, log_to_driver=False, logging_level=logging.ERROR,
             configure_logging=True)
    try:
        global _SPACE
        _SPACE = SearchSpace.load(SPACE)
        search = OptunaSearch(space=_define_by_run, metric=["accuracy", "train_time_s"],
                              mode=["max", "min"],
                              sampler=make_sampler("tpe", n_trials=trials, seed=seed))
        tuner = tune.Tuner(
            tune.with_resources(fn, {"cpu": 1.0}),
            tune_config=tune.TuneConfig(search_alg=search, num_samples=trials,
                                        max_concurrent_trials=2, reuse_actors=True),
            run_config=tune.RunConfig(storage_path=tempfile.mkdtemp(prefix="bench-bare-"),
                                      verbose=0))
        from autotune.envvars import scoped_env
        from autotune.runner import _ray_result_loggers

        with scoped_env(_ray_result_loggers() if loggers == "autotune" else {}):
            grid = tuner.fit()
        errors = sum(1 for r in grid if r.error is not None)
        if errors or len(grid) != trials:
            raise RuntimeError(f"bare Ray Tune run: {errors} errors in {len(grid)} trials")
    finally:
        ray.shutdown()
    return {"wall_s": time.perf_counter() - t0}


def run_raw_optuna(trials: int, seed: int, storage: bool) -> dict:
    """Raw Optuna ask/tell with the same sampler, space and storage kind as autotune's driver."""
    import optuna
    from model import metrics_at

    from autotune.sampler import make_sampler
    from autotune.space import SearchSpace

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    space = SearchSpace.load(SPACE)
    from autotune.study import sqlite_storage

    url = f"sqlite:///{tempfile.mkdtemp(prefix='bench-optuna-')}/optuna.db" if storage else None
    # The same storage set-up as autotune's (SQLite file, WAL): the ratio is autotune's own work.
    study = optuna.create_study(directions=["maximize", "minimize"],
                                storage=sqlite_storage(url) if url else None,
                                sampler=make_sampler("tpe", n_trials=trials, seed=seed))
    t_total = 0.0
    for _ in range(trials):
        t0 = time.perf_counter()
        t = study.ask()
        p = space.suggest(t)
        t_total += time.perf_counter() - t0
        m = metrics_at(p["optimizer.lr"], p["batch_size"], p["optimizer.weight_decay"], 3)
        t0 = time.perf_counter()
        study.tell(t, [m["accuracy"], m["train_time_s"]])
        t_total += time.perf_counter() - t0
    return {"sampler_s_per_trial": t_total / trials}


def _cpu_jiffies() -> tuple[int, int]:
    """Machine-wide busy (user, nice, system, irq, softirq) and steal clock ticks, /proc/stat."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:9]]
    return v[0] + v[1] + v[2] + v[5] + v[6], v[7]


def _measured(fn) -> dict:  # noqa: ANN001
    """fn()'s result plus the CPU time the whole machine spent while it ran (the study's driver,
    Ray's processes and the MLflow sender; nothing else runs here) and the time the hypervisor
    took from this VM (steal): wall times on this shared machine move with the second, the work
    done does not."""
    hz = os.sysconf("SC_CLK_TCK")
    b0, s0 = _cpu_jiffies()
    out = fn()
    b1, s1 = _cpu_jiffies()
    return {**out, "cpu_s": (b1 - b0) / hz, "steal_s": (s1 - s0) / hz, "workers": _job_workers()}


def _job_workers() -> int | None:
    """Worker processes Ray started for the run's job (its log files in the session just ended):
    2 when the two trial actors are reused throughout; more when Tune kept starting actors that
    it killed before they ran a trial (scheduler.MultiObjectiveASHA.choose_trial_to_run)."""
    logs = Path(tempfile.gettempdir()) / "ray" / "session_latest" / "logs"
    return len(list(logs.glob("worker-*-01000000-*.err"))) if logs.is_dir() else None


def _warm_imports() -> None:
    """Both sides' driver-side imports, before anything is timed: whichever variant ran first
    would otherwise pay alone for importing torch, Ray Tune and Optuna (2-3 s here)."""
    import optuna  # noqa: F401
    import ray.tune  # noqa: F401
    import ray.tune.search.optuna  # noqa: F401

    import autotune.progress  # noqa: F401
    import autotune.recording  # noqa: F401
    import autotune.runner  # noqa: F401
    import autotune.scheduler  # noqa: F401
    import autotune.searcher  # noqa: F401
    import autotune.trainer  # noqa: F401


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=200)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--only", choices=["ray", "sampler", "mlflow"], action="append")
    ap.add_argument("--json", type=Path)
    a = ap.parse_args()
    only = set(a.only or ["ray", "sampler", "mlflow"])
    _warm_imports()
    res: dict[str, list] = {"autotune": [], "bare_ray": [], "bare_ray_csvjson": [], "autotune_mlflow": [],
                            "cli": [], "cli_mlflow": [], "optuna_sqlite": [], "optuna_memory": []}
    for r in range(a.rounds):
        seed = r
        # Each ratio's two sides run next to each other (autotune between its two peers, the
        # informational peer last): the machine's speed drifts, and pairs far apart in time
        # (the MLflow pair had one to two runs between them before) take in more of the drift.
        order = []
        if "ray" in only:
            order.append(("bare_ray", lambda seed=seed: run_bare_ray(a.trials, seed)))
        order.append(("autotune", lambda seed=seed: run_autotune(a.trials, False, seed)))
        if "mlflow" in only:
            order.append(("autotune_mlflow", lambda seed=seed: run_autotune(a.trials, True, seed)))
            # the same pair as commands, a process each: what a user waits for
            order.append(("cli", lambda seed=seed: run_cli(a.trials, False, seed)))
            order.append(("cli_mlflow", lambda seed=seed: run_cli(a.trials, True, seed)))
        if "ray" in only:
            # not the target's peer (that is Ray's defaults): how much of the ratio is the loggers
            order.append(("bare_ray_csvjson", lambda seed=seed: run_bare_ray(a.trials, seed, "autotune")))
        if r % 2:
            order.reverse()
        for name, fn in order:
            res[name].append(_measured(fn))
            print(f"round {r} {name}: {res[name][-1]}", flush=True)
        if "sampler" in only:
            res["optuna_sqlite"].append(run_raw_optuna(a.trials, seed, True))
            res["optuna_memory"].append(run_raw_optuna(a.trials, seed, False))
            print(f"round {r} optuna: {res['optuna_sqlite'][-1]} / memory {res['optuna_memory'][-1]}")

    def med(name: str, key: str) -> float | None:
        vals = [x[key] for x in res[name]]
        return statistics.median(vals) if vals else None

    summary = {
        "trials": a.trials, "rounds": a.rounds, "command": command(), "machine": machine(),
        "versions": versions(), "date": time.strftime("%Y-%m-%d"), "raw": res,
        "autotune_wall_s": med("autotune", "wall_s"), "bare_ray_wall_s": med("bare_ray", "wall_s"),
        "bare_ray_csvjson_wall_s": med("bare_ray_csvjson", "wall_s"),
        "mlflow_wall_s": med("autotune_mlflow", "wall_s"),
        "autotune_sampler_ms": 1e3 * med("autotune", "sampler_s_per_trial"),
        "optuna_sqlite_ms": 1e3 * (med("optuna_sqlite", "sampler_s_per_trial") or float("nan")),
        "optuna_memory_ms": 1e3 * (med("optuna_memory", "sampler_s_per_trial") or float("nan")),
    }
    # Ratios are paired: each round's pair ran back to back under the same machine load, and the
    # median is over rounds (on this shared 2-core machine one round's walls can differ by 1.5x).
    def paired(name: str, num: str, den: str, key: str) -> None:
        """`<name>_ratios` per round and their median, `<name>_ratio`."""
        ratios = [x[key] / y[key] for x, y in zip(res[num], res[den], strict=False)]
        summary[f"{name}_ratios"], summary[f"{name}_ratio"] = ratios, statistics.median(ratios)

    if res["bare_ray"]:
        paired("ray", "autotune", "bare_ray", "wall_s")
        paired("ray_cpu", "autotune", "bare_ray", "cpu_s")
        paired("ray_same_loggers", "autotune", "bare_ray_csvjson", "wall_s")
    if res["autotune_mlflow"]:
        paired("mlflow", "autotune_mlflow", "autotune", "wall_s")
        paired("mlflow_cpu", "autotune_mlflow", "autotune", "cpu_s")
        paired("mlflow_cli", "cli_mlflow", "cli", "wall_s")
        summary["cli_wall_s"], summary["cli_mlflow_wall_s"] = med("cli", "wall_s"), med("cli_mlflow", "wall_s")
    summary["workers"] = {k: [x.get("workers") for x in v] for k, v in res.items() if v and "wall_s" in v[0]}
    summary["steal_s"] = {k: [round(x["steal_s"], 2) for x in v] for k, v in res.items() if v and "steal_s" in v[0]}
    summary["sampler_ratio"] = summary["autotune_sampler_ms"] / summary["optuna_sqlite_ms"]
    print(json.dumps({k: v for k, v in summary.items() if k != "raw"}, indent=1, default=str))
    if a.json:
        a.json.write_text(json.dumps(summary, indent=1, default=str))


if __name__ == "__main__":
    main()
