"""Search efficiency on tabulated benchmarks (issue 6): hypervolume and regret vs compute (epochs).

    .venv/bin/python scripts/bench_search.py --seeds 10 --ray-seeds 2 --json /tmp/search.json

Tables (scripts/tables/*.json.gz, built by scripts/make_table.py) hold every policy of a choice-only
space trained once for its full budget, per epoch. Methods, all over the same table and budget:

- autotune        autotune's defaults: PolicySearcher (sampler 'tpe' as make_sampler builds it)
                  + MultiObjectiveRungs with its defaults (RungSchedule.default: rungs 1/3/9 of 10
                  epochs, 1/3 of 8; rank-0 trials always continue; quota doubles once half the
                  budget, here the epoch budget, is spent), asynchronous pool of 2 workers
- autotune-asha   the same with autotune's previous early stopping (rungs 3*3^k, promotion of the
                  top ceil(n/eta) only): textbook MO-ASHA on the same sampler
- autotune-noES   the same without early stopping
- autotune-prev   the defaults before the searcher refused repeats (PolicySearcher max_repeats=0:
                  the sampler may propose a policy the study already ran, and it runs again)
- optuna-motpe    raw Optuna ask/tell loop, stock TPESampler(seed) (MO-TPE), no early stopping
- optuna-nsga2    raw Optuna loop, NSGAIISampler sized as autotune sizes it, no early stopping
- random          raw Optuna loop, RandomSampler
- synetune-moasha Syne Tune's MOASHA (random configs, grace 3, eta 3), pool of 2 workers

autotune's variants run in-process (the same classes the Ray pipeline uses, driven by a simulated
asynchronous pool of 2 workers whose epochs take the table's recorded time); --ray-seeds seeds also go
through the real `autotune search` pipeline (run_search + Ray Tune + replay model.py) for comparison.
Compute is counted in epochs of the trials completed so far; only trials that trained their full budget
count for the hypervolume (as in autotune's own front).
"""

from __future__ import annotations

import argparse
import heapq
import json
import math
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchlib import HV, ROOT, Replay, command, final_vector, machine, versions  # noqa: E402

FRACTIONS = (0.25, 0.5, 1.0)
METHODS = ("autotune", "autotune-prev", "autotune-asha", "autotune-noES", "optuna-motpe",
           "optuna-nsga2", "random", "synetune-moasha")
# autotune's early stopping before this benchmark moved it: rungs 3·3^k, top ceil(n/eta) only.
ASHA_RUNGS = {"grace": 3, "promote_front": False, "mature_at": None}


# ---- one run = a list of (cumulative epochs, final vector or None) in completion order ------------
def _epoch_rows(row: dict[str, Any]) -> list[dict[str, float]]:
    return row["epochs"]


def _durations(row: dict[str, Any]) -> list[float]:
    t = [0.0] + [r["train_time_s"] for r in row["epochs"]]
    return [max(1e-3, b - a) for a, b in zip(t, t[1:], strict=False)] or [1.0]


class _Pool:
    """Asynchronous workers: each runs one trial epoch by epoch; events in simulated time order."""

    def __init__(self, workers: int) -> None:
        self.workers, self.events, self.now, self.seq = workers, [], 0.0, 0

    def start(self, trial: Any, dur: float) -> None:
        self.seq += 1
        heapq.heappush(self.events, (self.now + dur, self.seq, trial))

    def next(self) -> Any:
        self.now, _, trial = heapq.heappop(self.events)
        return trial


def run_autotune(rp: Replay, seed: int, budget: int, early_stop: bool, workers: int = 2,
                 sampler: str = "tpe", rungs_kw: dict[str, Any] | None = None,
                 searcher_kw: dict[str, Any] | None = None) -> list[tuple[int, Any]]:
    """autotune's searcher + scheduler classes, driven like Ray Tune drives them."""
    import optuna

    from autotune.objectives import Objective
    from autotune.policy import Policy
    from autotune.sampler import make_sampler
    from autotune.scheduler import MultiObjectiveRungs, RungSchedule
    from autotune.searcher import PolicySearcher
    from autotune.space import SearchSpace

    table = rp.table
    objs = [Objective(m, d) for m, d in table["objectives"]]
    base = Policy().with_overrides(rp.default_policy)
    space = SearchSpace.load(rp.space_file).fix({"epochs": base.epochs})
    n_trials = max(10, budget // table["epochs"])  # what a user would pass as --trials
    study = optuna.create_study(directions=["maximize" if o.direction == "max" else "minimize"
                                            for o in objs],
                                sampler=make_sampler(sampler, n_trials=n_trials, seed=seed))
    # The library's defaults: the rung schedule run_search builds and the scheduler's own settings.
    kw = dict(rungs_kw or {})
    grace = kw.pop("grace", None)
    schedule = (RungSchedule.geometric(grace, 3, base.epochs) if grace
                else RungSchedule.default(3, base.epochs))
    rungs = (MultiObjectiveRungs([(o.metric, o.direction) for o in objs], schedule, **kw)
             if early_stop else None)
    done: list[tuple[int, Any]] = []
    used = [0]
    views: dict[int, Any] = {}

    def on_finish(view: Any) -> None:
        views[view.number] = view

    searcher = PolicySearcher(study=study, space=space, base=base, objectives=objs, constraints=[],
                              baseline_needed=True, trial_config={}, on_finish=on_finish,
                              stopped_by_scheduler=lambda t: rungs.stopped.get(t) if rungs
                              else None, **(searcher_kw or {}))
    pool = _Pool(workers)
    state: dict[str, dict[str, Any]] = {}
    counter = 0

    def launch() -> None:
        nonlocal counter
        tid = f"t{counter}"
        counter += 1
        cfg = searcher.suggest(tid)
        row = table["index"][rp.key(cfg["policy"])]
        state[tid] = {"row": row, "epoch": 0, "dur": _durations(row), "tid": tid}
        pool.start(tid, state[tid]["dur"][0])

    for _ in range(workers):
        launch()
    while used[0] < budget:
        tid = pool.next()
        s = state[tid]
        s["epoch"] += 1
        e = s["epoch"]
        rows = s["row"]["epochs"]
        diverged = e > len(rows)
        r = dict(rows[min(e, len(rows)) - 1])
        if diverged:
            r[table["quality"]] = math.nan
        r.update(epoch=e, training_iteration=e)
        last = e >= base.epochs or diverged
        r["autotune_status"] = ("diverged" if diverged else "finished" if last else "running")
        stop = False
        if rungs is not None and not last:
            stop = rungs.on_result(tid, e, {o.metric: r[o.metric] for o in objs}) == "stop"
        if stop or last:
            searcher.on_trial_complete(tid, r)
            used[0] += e
            if rungs is not None:  # as run_search does when a trial ends (there: trials done / trials)
                rungs.set_progress(used[0] / budget)
            finished = r["autotune_status"] == "finished"
            done.append((used[0], final_vector(s["row"], table["objectives"]) if finished else None))
            del state[tid]
            launch()
        else:
            searcher.on_trial_result(tid, r)
            pool.start(tid, s["dur"][min(e, len(s["dur"]) - 1)])
    return done


def run_optuna(rp: Replay, seed: int, budget: int, kind: str) -> list[tuple[int, Any]]:
    """A plain Optuna ask/tell loop over the table, every trial trained to its full budget."""
    import optuna

    from autotune.sampler import make_sampler
    from autotune.space import SearchSpace

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    table = rp.table
    epochs = table["epochs"]
    n_trials = budget // epochs
    sampler = {"optuna-motpe": lambda: optuna.samplers.TPESampler(seed=seed),
               "optuna-nsga2": lambda: make_sampler("nsga2", n_trials=n_trials, seed=seed),
               "random": lambda: optuna.samplers.RandomSampler(seed=seed)}[kind]()
    dirs = ["maximize" if d == "max" else "minimize" for _, d in table["objectives"]]
    study = optuna.create_study(directions=dirs, sampler=sampler)
    study.enqueue_trial(SearchSpace.load(rp.space_file).trial_params(json.loads(table["default_key"])))
    space = SearchSpace.load(rp.space_file)
    done, used = [], 0
    for _ in range(n_trials):
        t = study.ask()
        flat = {**rp.default_policy, **space.suggest(t)}
        row = table["index"][rp.key(flat)]
        v = final_vector(row, table["objectives"])
        used += epochs if v is not None else len(row["epochs"])
        if v is None:
            study.tell(t, state=optuna.trial.TrialState.FAIL)
        else:
            study.tell(t, list(v))
        done.append((used, v))
    return done


def run_moasha(rp: Replay, seed: int, budget: int, workers: int = 2) -> list[tuple[int, Any]]:
    """Syne Tune's MOASHA (random configurations, non-dominated-sort promotion), same pool and table."""
    import datetime

    from syne_tune.backend.trial_status import Trial
    from syne_tune.config_space import choice
    from syne_tune.optimizer.schedulers.multiobjective.moasha import MOASHA

    from autotune.space import SearchSpace

    np.random.seed(seed)
    table = rp.table
    space = SearchSpace.load(rp.space_file)
    # Conditional keys (prune.ratio only when pruning) become one choice over the valid combinations.
    combos: dict[str, list[dict]] = {}
    groups: dict[str, set[str]] = {}
    for p in space.params:
        root = next(iter(p.when), p.key) if p.when else p.key
        groups.setdefault(root, set()).add(p.key)
    for root, keys in groups.items():
        seen = {json.dumps({k: v for k, v in json.loads(r["key"]).items() if k in keys}, sort_keys=True)
                for r in table["rows"]}
        combos[root] = [json.loads(x) for x in sorted(seen)]
    cs = {root: choice(list(range(len(v)))) for root, v in combos.items()}
    objs = table["objectives"]
    sign = {m: (-1.0 if d == "max" else 1.0) for m, d in objs}
    sched = MOASHA(cs, metrics=[m for m, _ in objs], do_minimize=True, time_attr="epoch",
                   max_t=table["epochs"], grace_period=3, reduction_factor=3, random_seed=seed)
    pool = _Pool(workers)
    state: dict[int, dict[str, Any]] = {}
    done: list[tuple[int, Any]] = []
    used, counter = 0, 0

    def launch() -> None:
        nonlocal counter
        cfg = sched.suggest().config
        flat = {**rp.default_policy}
        for root, idx in cfg.items():
            flat.update(combos[root][idx])
        row = table["index"][rp.key(flat)]
        trial = Trial(trial_id=counter, config=cfg, creation_time=datetime.datetime.now())
        sched.on_trial_add(trial)
        state[counter] = {"row": row, "epoch": 0, "dur": _durations(row), "trial": trial}
        pool.start(counter, state[counter]["dur"][0])
        counter += 1

    for _ in range(workers):
        launch()
    while used < budget:
        tid = pool.next()
        s = state[tid]
        s["epoch"] += 1
        e = s["epoch"]
        rows = s["row"]["epochs"]
        if e > len(rows):  # diverged: a failed trial
            used += e - 1
            done.append((used, None))
            sched.on_trial_remove(s["trial"])
            del state[tid]
            launch()
            continue
        r = rows[e - 1]
        res = {"epoch": e, **{m: sign[m] * r[m] for m, _ in objs}}
        decision = sched.on_trial_result(s["trial"], res)
        last = e >= table["epochs"]
        if last or decision == "STOP" or str(decision).upper().endswith("STOP"):
            used += e
            done.append((used, final_vector(s["row"], objs) if last else None))
            if not last:
                sched.on_trial_remove(s["trial"])
            del state[tid]
            launch()
        else:
            pool.start(tid, s["dur"][min(e, len(s["dur"]) - 1)])
    return done


def run_ray(rp: Replay, seed: int, budget: int, trials: int) -> list[tuple[int, Any]]:
    """The real pipeline: run_search on the replay model (Ray Tune, scheduler, searcher), tracking off."""
    from rich.console import Console

    from autotune.runner import SearchOptions, run_search

    os.environ["AUTOTUNE_HOME"] = tempfile.mkdtemp(prefix="bench-search-")
    model = ROOT / "scripts" / "bench_models" / f"replay_{rp.name}" / "model.py"
    out = run_search(SearchOptions(model_file=model, trials=trials, name=f"replay-{seed}", seed=seed,
                                   tracking=False), console=Console(file=open(os.devnull, "w")))
    views = sorted(out.study.trial_views(), key=lambda v: (v.ended or 0, v.number))
    objs = rp.table["objectives"]
    done, used = [], 0
    for v in views:
        used += int(v.stopped_at_epoch or (len(v.curves) if v.status != "finished" else rp.epochs))
        if used > budget:
            break
        ok = v.status == "finished" and all(math.isfinite(v.metrics.get(m, math.nan)) for m, _ in objs)
        done.append((used, tuple(v.metrics[m] for m, _ in objs) if ok else None))
    return done


# ---- metrics ----------------------------------------------------------------------------------
def hv_at(hv: HV, done: list[tuple[int, Any]], epochs: float) -> float:
    return hv.of([v for u, v in done if u <= epochs and v is not None])


def curve(hv: HV, done: list[tuple[int, Any]], budget: int, points: int = 40) -> list[float]:
    return [hv_at(hv, done, budget * (i + 1) / points) for i in range(points)]


def epochs_to_reach(hv: HV, done: list[tuple[int, Any]], target: float) -> float:
    pts = []
    for u, v in done:
        if v is not None:
            pts.append(v)
            if hv.of(pts) >= target - 1e-12:
                return float(u)
    return math.inf


def median_ci(xs: list[float], rng: np.random.Generator, n: int = 2000) -> tuple[float, float, float]:
    a = np.array(xs, dtype=float)
    boots = np.median(rng.choice(a, size=(n, len(a)), replace=True), axis=1)
    return float(np.median(a)), float(np.quantile(boots, 0.025)), float(np.quantile(boots, 0.975))


def bench_table(name: str, seeds: int, ray_seeds: int, budget_trials: int,
                methods: tuple[str, ...]) -> dict[str, Any]:
    rp = Replay(name)
    hv = HV(rp.table)
    budget = budget_trials * rp.epochs
    runs: dict[str, list] = {m: [] for m in methods}
    t0 = time.time()
    for m in methods:
        for s in range(seeds):
            if m == "autotune":
                runs[m].append(run_autotune(rp, s, budget, True))
            elif m == "autotune-prev":
                runs[m].append(run_autotune(rp, s, budget, True, searcher_kw={"max_repeats": 0}))
            elif m == "autotune-asha":
                runs[m].append(run_autotune(rp, s, budget, True, rungs_kw=ASHA_RUNGS))
            elif m == "autotune-noES":
                runs[m].append(run_autotune(rp, s, budget, False))
            elif m == "synetune-moasha":
                runs[m].append(run_moasha(rp, s, budget))
            else:
                runs[m].append(run_optuna(rp, s, budget, m))
        print(f"  {name} {m}: {time.time() - t0:.0f}s", flush=True)
    ray_runs = []
    for s in range(ray_seeds):
        trials = max(len(r) for r in runs.get("autotune", [[]])[:1]) + 4
        ray_runs.append(run_ray(rp, s, budget, trials))
        print(f"  {name} ray seed {s}: {time.time() - t0:.0f}s", flush=True)
    rng = np.random.default_rng(0)
    res: dict[str, Any] = {"table": name, "budget_epochs": budget, "budget_trials": budget_trials,
                           "true_hv": hv.true, "policies": len(rp.table["rows"]),
                           "front_size": hv.front_size, "seeds": seeds, "methods": {}}
    for m, rs in runs.items():
        d: dict[str, Any] = {}
        for f in FRACTIONS:
            hvs = [hv_at(hv, r, budget * f) for r in rs]
            d[f"hv@{f}"] = median_ci(hvs, rng)
            d[f"regret@{f}"] = median_ci([hv.true - h for h in hvs], rng)
        d["curve"] = np.median([curve(hv, r, budget) for r in rs], axis=0).tolist()
        d["trials"] = float(np.median([len(r) for r in rs]))
        d["full_trials"] = float(np.median([sum(v is not None for _, v in r) for r in rs]))
        d["final_hvs"] = [hv_at(hv, r, budget) for r in rs]
        res["methods"][m] = d
    # compute to reach each peer's final (median) hypervolume
    for m, rs in runs.items():
        reach = {}
        for p in runs:
            target = res["methods"][p]["hv@1.0"][0]
            reach[p] = float(np.median([epochs_to_reach(hv, r, target) for r in rs]))
        res["methods"][m]["epochs_to_reach"] = reach
    if ray_runs:
        hvs = [hv_at(hv, r, budget) for r in ray_runs]
        sim = res["methods"]["autotune"]["final_hvs"][:ray_seeds]
        res["ray"] = {"seeds": ray_seeds, "final_hv": hvs, "sim_final_hv_same_seeds": sim,
                      "curve": np.median([curve(hv, r, budget) for r in ray_runs], axis=0).tolist(),
                      "hv@0.5": [hv_at(hv, r, budget * 0.5) for r in ray_runs]}
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tables", nargs="+", default=["digits", "charlm"])
    ap.add_argument("--seeds", type=int, default=10)
    ap.add_argument("--ray-seeds", type=int, default=2)
    ap.add_argument("--budget-trials", type=int, default=30,
                    help="budget in full-length trials' worth of epochs")
    ap.add_argument("--methods", nargs="+", default=list(METHODS))
    ap.add_argument("--json", type=Path)
    a = ap.parse_args()
    out = {"command": command(), "machine": machine(), "versions": versions(),
           "date": time.strftime("%Y-%m-%d"), "tables": {}}
    for name in a.tables:
        out["tables"][name] = bench_table(name, a.seeds, a.ray_seeds, a.budget_trials, tuple(a.methods))
        r = out["tables"][name]
        for m, d in r["methods"].items():
            print(f"{name:7s} {m:16s} regret@25% {d['regret@0.25'][0]:.4f} @50% {d['regret@0.5'][0]:.4f}"
                  f" @100% {d['regret@1.0'][0]:.4f}  trials {d['trials']:.0f} full {d['full_trials']:.0f}"
                  f"  reach motpe {d['epochs_to_reach'].get('optuna-motpe', math.nan):.0f}", flush=True)
        if "ray" in r:
            print(f"{name} ray final hv {r['ray']['final_hv']} vs sim {r['ray']['sim_final_hv_same_seeds']}")
    if a.json:
        a.json.write_text(json.dumps(out, indent=1, default=str))


if __name__ == "__main__":
    main()
