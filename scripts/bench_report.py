"""Write the issue-6 sections of docs/BENCHMARKS.md (and docs/img/*.png) from the benchmark JSON files.

    .venv/bin/python scripts/bench_report.py --dir bench_out

Sections other scripts own (e.g. "## Trainer", written by bench_trainer.py) are kept as they are.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchlib import ROOT  # noqa: E402

DOC = ROOT / "docs" / "BENCHMARKS.md"
IMG = ROOT / "docs" / "img"
OURS = ("## Orchestration overhead", "## Search efficiency", "## What tuning buys")
LABEL = {"autotune": "autotune (defaults: TPE + MO early stopping)",
         "autotune-prev": "autotune, previous defaults (repeated policies run again)",
         "autotune-asha": "autotune TPE + previous early stopping (rungs 3·3ᵏ, top ⌈n/η⌉ only)",
         "autotune-noES": "autotune TPE, no early stopping",
         "optuna-motpe": "Optuna MO-TPE (stock), no ES", "optuna-nsga2": "Optuna NSGA-II, no ES",
         "random": "random search", "synetune-moasha": "Syne Tune MOASHA"}


def _f(x: float | None, d: int = 3) -> str:
    return "n/a" if x is None or (isinstance(x, float) and not math.isfinite(x)) else f"{x:.{d}g}"


def _ok(flag: bool) -> str:
    return "**met**" if flag else "**missed**"


def overhead(d: dict) -> str:
    r, s, m = d.get("ray_ratio"), d.get("sampler_ratio"), d.get("mlflow_ratio")
    return "\n".join([
        "## Orchestration overhead", "",
        f"Command: `{d['command']}`  ",
        f"Machine: {d['machine']['cpu']}, {d['machine']['nproc']} cores; {_versions(d)}; {d['date']}", "",
        f"No-op trainable (`scripts/bench_models/noop/model.py`: 3 epochs of synthetic metrics, no torch), "
        f"{d['trials']} trials, 2 CPUs (2 trials at a time), the variants run one after another in one "
        f"process ({d['rounds']} round(s), medians).", "",
        "| measure | autotune | peer | ratio | target |", "|---|---:|---:|---:|---|",
        f"| wall time, `run_search` (tracking off) vs bare Ray Tune Tuner + OptunaSearch | "
        f"{_f(d.get('autotune_wall_s'))} s | {_f(d.get('bare_ray_wall_s'))} s | {_f(r)}× | ≤ 1.1×: {_ok(r is not None and r <= 1.1)} |",
        f"| sampler time per trial (ask + suggest + tell, `sampler_seconds`) vs raw Optuna ask/tell, "
        f"same sampler, space and SQLite storage | {_f(d.get('autotune_sampler_ms'))} ms | "
        f"{_f(d.get('optuna_sqlite_ms'))} ms | {_f(s)}× | ≤ 1.5×: {_ok(s is not None and s <= 1.5)} |",
        f"| wall time, MLflow on vs off | {_f(d.get('mlflow_wall_s'))} s | {_f(d.get('autotune_wall_s'))} s | "
        f"{_f(m)}× | ≤ 1.1×: {_ok(m is not None and m <= 1.1)} |", "",
        f"Raw Optuna ask/tell with in-memory storage: {_f(d.get('optuna_memory_ms'))} ms per trial; "
        "nearly all of a trial's sampler time on SQLite is commits (~6 ms each here, fsync), which is "
        "what autotune pays for a resumable study.", "",
        "Found and fixed with this benchmark: the searcher wrote each of a trial's seven user "
        "attributes (policy, status, metrics, curves, Ray id, baseline flag, constraints) with its own "
        "`set_user_attr`, one SQLite commit each, so a trial's sampler time was 2.4× raw Optuna's "
        "(184 vs 76 ms per trial in a 30-trial run). They are now written in one storage transaction "
        "(`autotune/searcher.py`, `_set_attrs`), and the policy attribute is no longer written "
        "separately at ask time. And autotune's Optuna storage now runs SQLite in WAL mode with "
        "synchronous=NORMAL (`autotune/study.py`, `sqlite_storage`): a commit is an append instead of "
        "an fsync; nothing committed is lost to Ctrl-C or kill -9 (raw Optuna above uses the same "
        "storage set-up, so the ratio is autotune's own work).", "",
        "The peer is a fair one: the same Tune set-up (1 CPU per trial, `max_concurrent_trials=2`, "
        "`reuse_actors=True`, Ray's default result loggers), one `tune.report` per epoch (3 per trial) "
        "computing the same synthetic metrics, Optuna's TPE exactly as autotune builds it over the same "
        "space, and a fresh `ray.init`/`ray.shutdown` inside the timed span on both sides. Driver-side "
        "imports (torch, Ray Tune, Optuna, autotune) are done once before anything is timed; before, "
        "the variant that ran first (autotune) paid 2-3 s of them alone.", "",
        "Found and fixed with this benchmark (2.71x before, with imports charged to autotune): the "
        "searcher sampled straight on the study's SQLite file. Multivariate TPE with `constant_liar` "
        "read the running trials back from the database about four times per trial and Optuna "
        "committed every param on its own, ~45 ms per trial on the driver's thread against ~8 ms for "
        "the peer's in-memory `OptunaSearch`; Ray Tune's controller waits for it, and with trials this "
        "short neither side ever had two trials live at once (a timeline of trial starts and ends), so "
        "it all adds up. The sampler now works on an in-memory copy of the study "
        "(`autotune/searcher.py`, `_sampler_copy`, `_ask_mirrored`), and the database is written in "
        "two transactions per trial: the running trial with its params when it is asked for (a killed "
        "driver still leaves it RUNNING, and the next run reruns it) and its attributes, state and "
        "values when it ends (`_set_attrs(..., end=...)`): ~20 ms per trial. A diagnostic run with the "
        "study on in-memory storage (not resumable) took 15.3 s against the peer's 21.1 s (one run each, "
        "same session): nothing else in autotune's per-trial path costs more than the peer's. Measured and "
        "ruled out: `RunConfig(log_to_file=True)` (actors are reused with it; A/B within noise), the "
        "progress callback (0.01 s over 355 controller steps; redraws are now throttled to 2 per second "
        "at trial ends too), the model file cache in the workers (loaded once per actor), Ray's result "
        "loggers (the same ~8 ms per trial on both sides, mostly TensorBoard's).", "",
        "Where the rest of the gap goes (200 trials, instrumented runs on this machine): (1) the "
        "study's SQLite writes and the read-back of each ended trial for the progress panel and "
        "MLflow, ~12 ms per trial more than the peer on the driver's thread (~2.4 s); (2) both Ray "
        "workers import autotune, and with it torch (~1.4 s of CPU each on a quiet core), before their "
        "first trial, so autotune's first trial starts ~2.7 s after the peer's, whose trainable imports "
        "only the no-op model; a real model file imports torch on both sides; (3) creating the study's "
        "SQLite storage, ~0.7 s. Reaching 1.1x would take writing the study from a background thread "
        "and a torch-free import path for custom-loop workers.", "",
        "MLflow on vs off: the 1x measured before the sampler fix did not survive it. Recording runs on "
        "the driver's thread, ~140 ms of CPU per trial in a 100-trial profile (py-spy), three quarters "
        "of it `Recorder.set_front`: after every trial it lists all of the study's child runs from "
        "MLflow (`search_runs`) to update their Pareto tags, so it grows with the study. Fixed "
        "after that profile: a new child run is created with `autotune.pareto=false` and the recorder "
        "sends front tags only when the front's membership changes (`recording.StudyRecorder.trial`); "
        "that took MLflow on vs off from 2.76x to 1.61x (2 rounds). What remains is one `log_batch` + "
        "`set_terminated` per trial on the driver's thread; moving the MLflow writer to a background "
        "thread (the spool already makes it safe) is the next step.", ""])


def _versions(d: dict) -> str:
    return ", ".join(f"{k} {v}" for k, v in d["versions"].items())


def search(d: dict) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    IMG.mkdir(parents=True, exist_ok=True)
    out = ["## Search efficiency", "",
           f"Command: `{d['command']}`  ",
           f"Machine: {d['machine']['cpu']}, {d['machine']['nproc']} cores; {_versions(d)}; {d['date']}", "",
           "Tabulated benchmarks built from real training by `scripts/make_table.py` (every policy of a "
           "choice-only space trained once for its full budget, per-epoch quality and cost; the files "
           "are `scripts/tables/*.json.gz`, the spaces `scripts/tables/*_space.yaml`):", "",
           "- **digits**: `studies/digits` (10 epochs), 162 policies: width × lr × batch size × "
           "precision × pruning; objectives accuracy (max) and train_time_s (min).",
           "- **charlm**: `scripts/tables/charlm_small/model.py` = `studies/charlm`'s GRU on 15 % of "
           "its training text, 8 epochs (so the table builds in minutes), 108 policies: hidden × lr × "
           "batch size × precision × pruning; objectives perplexity (min) and train_time_s (min).", "",
           "Hypervolume on objectives normalised by the table's true front (ideal 0, nadir 1), "
           "reference point 1.1 in each; regret = true front's hypervolume − found front's. Compute = "
           "epochs of the trials completed so far; only trials trained to the full budget count for "
           "the found front (as in autotune's own front). Medians over seeds with 95 % bootstrap CIs.", "",
           "autotune's three variants run the real `PolicySearcher` + `MultiObjectiveRungs` classes "
           "in-process, driven by a simulated asynchronous pool of 2 workers whose epochs take the "
           "table's recorded time (`run_autotune` in `scripts/bench_search.py`). "
           "The Optuna peers are plain ask/tell loops over the table (stock `TPESampler(seed)`; "
           "NSGA-II with autotune's population sizing), Syne Tune's `MOASHA` (random configurations, "
           "grace 3, η 3, non-dominated-sort promotion) runs on the same simulated pool.", ""]
    for name, t in d["tables"].items():
        ms = t["methods"]
        out += [f"### {name}: {t['policies']} policies, true front {t['front_size']} points, budget "
                f"{t['budget_epochs']} epochs (= {t['budget_trials']} full trials), {t['seeds']} seeds", "",
                "| method | regret @25 % | regret @50 % | regret @100 % | trials run | full-budget trials |",
                "|---|---|---|---|---:|---:|"]
        for m, r in ms.items():
            cells = [f"{_f(r[f'regret@{f}'][0])} [{_f(r[f'regret@{f}'][1])}, {_f(r[f'regret@{f}'][2])}]"
                     for f in ("0.25", "0.5", "1.0")]
            out.append(f"| {LABEL.get(m, m)} | {' | '.join(cells)} | {r['trials']:.0f} | {r['full_trials']:.0f} |")
        out += ["", "Epochs each method needs (median over seeds; ∞ = not reached within the budget) to reach "
                "each peer's median final hypervolume:", "",
                "| method \\ target | " + " | ".join(ms) + " |", "|---|" + "---:|" * len(ms)]
        for m, r in ms.items():
            out.append(f"| {m} | " + " | ".join(
                "∞" if not math.isfinite(r["epochs_to_reach"][p]) else f"{r['epochs_to_reach'][p]:.0f}"
                for p in ms) + " |")
        for who, title in (("autotune", "autotune defaults"),
                           ("autotune-prev", "previous defaults (autotune-prev), for comparison"),
                           ("autotune-asha", "TPE + previous early stopping (autotune-asha), "
                                             "for comparison")):
            if who not in ms or "optuna-motpe" not in ms:
                continue
            a, p = ms[who], ms["optuna-motpe"]
            rows = []
            for f, tgt in (("0.25", 0.6), ("0.5", 0.6), ("1.0", 1.0)):
                pr = p[f"regret@{f}"][0]
                ratio = a[f"regret@{f}"][0] / pr if pr > 0 else math.inf
                rows.append(f"regret @{float(f) * 100:.0f} %: {_f(ratio)}× (target ≤ {tgt}×: {_ok(ratio <= tgt)})")
            # MO-TPE's own compute: the median epochs its seeds need to reach its median final
            # hypervolume, or the whole budget where fewer than half of them reach it.
            own = p["epochs_to_reach"]["optuna-motpe"]
            own = own if math.isfinite(own) else t["budget_epochs"]
            reach = a["epochs_to_reach"]["optuna-motpe"] / own
            rows.append(f"MO-TPE's final hypervolume reached with {_f(reach)}× its compute "
                        f"(target ≤ 0.5×: {_ok(reach <= 0.5)})")
            out += ["", f"**Targets, {title} vs Optuna MO-TPE without early stopping:** " + "; ".join(rows) + "."]
        if "ray" not in t:
            out += ["", "Real pipeline check (`run_search` + Ray Tune on the replay model): not run "
                    "in this benchmark run (`--ray-seeds 0`)."]
        if "ray" in t:
            rr = t["ray"]
            out += ["", f"Real pipeline check: {rr['seeds']} seed(s) through `run_search` + Ray Tune on "
                    f"`scripts/bench_models/replay_{name}/model.py` (the trainable reads the table): final "
                    f"hypervolume {', '.join(_f(x, 4) for x in rr['final_hv'])} vs the in-process "
                    f"simulation of the same seeds {', '.join(_f(x, 4) for x in rr['sim_final_hv_same_seeds'])}"
                    f" (true {_f(t['true_hv'], 4)}; seeds differ in asynchrony: Ray's replay trials take no "
                    "time, the simulation's take the table's)."]
        fig, ax = plt.subplots(figsize=(6.4, 4))
        for m, r in ms.items():
            xs = [t["budget_epochs"] * (i + 1) / len(r["curve"]) for i in range(len(r["curve"]))]
            ax.plot(xs, r["curve"], label=LABEL.get(m, m), lw=2 if m == "autotune" else 1.2)
        if "ray" in t:
            c = t["ray"]["curve"]
            ax.plot([t["budget_epochs"] * (i + 1) / len(c) for i in range(len(c))], c, "k:",
                    label=f"autotune via Ray ({t['ray']['seeds']} seeds)")
        ax.axhline(t["true_hv"], color="grey", ls="--", lw=0.8, label="true front")
        ax.set_xlabel("compute (epochs)")
        ax.set_ylabel("hypervolume (median over seeds)")
        ax.set_title(f"{name}: hypervolume vs compute")
        ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(IMG / f"search_{name}.png", dpi=110)
        plt.close(fig)
        out += ["", f"![hypervolume vs compute, {name}](img/search_{name}.png)", ""]
    out += [MOVED, ""]
    return "\n".join(out)


# Ablation behind the defaults (scheduler.py, RungSchedule.default): the in-process replay of
# run_autotune, one setting changed at a time, ratios to MO-TPE's median regret, 10 and 40 seeds.
MOVED = """### What moved each number

autotune's early stopping was textbook MO-ASHA (row `autotune-asha`): rungs at 3·3ᵏ epochs and
promotion of the top ⌈n/η⌉ by non-dominated rank + crowding. Too few trials reached the full
budget (digits: 10 of 57), and only those enter the front. Three changes, each measured on its own
with the in-process replay (ratios to MO-TPE's regret @25 / 50 / 100 %, then compute to reach
MO-TPE's final hypervolume; 40 seeds, which the 10-seed tables above scatter around by ±0.1–0.2):

1. **A trial non-dominated among those recorded at its rung always continues** (`promote_front=True`),
   on top of the ⌈n/η⌉ quota. This moved the most: digits 1.37 / 1.74 / 0.80 / 0.76× → 0.70 /
   0.61 / 0.49 / 0.67× (full-budget trials 11 → 17 of ~55); charlm about even (0.54 / 0.52 / 0.15 /
   0.51× → 0.60 / 0.55 / 0.09 / 0.54×). With two objectives a trade-off point is often rank 0, and
   it is exactly the kind of trial the front needs.
2. **First rung at max(1, epochs // η²)** (`RungSchedule.default`: 1/3/9 for 10 epochs, 1/3 for 8;
   3/9/27 for 30, as before): a dominated policy now costs one epoch instead of three and the
   sampler hears of it sooner. With 1.: digits 0.67 / 0.40 / 0.63 / 0.48×, charlm 0.54 / 0.25 /
   0.09 / 0.41× (also the best @25 % of grace 1, 2, 3 and of dropping rungs past half the budget).
   Without 1., grace 1 is much worse on digits (2.72 / 3.45 / 1.01×): the two need each other.
3. **Budget shifts to full-length trials once half the budget is spent** (`mature_at=0.5`,
   `mature_factor=2`: the quota becomes ⌈2n/η⌉; `run_search` reports trials done / trials, or the
   time budget's share, through `set_progress`; the replay reports epochs spent / epoch budget).
   It moves only the late numbers: digits @100 % 0.63 → 0.35×, charlm unchanged (0.09×); 10–20 %
   fewer trials run (digits 80 → 71, charlm 66 → 54), more of them to the end.

Still missed: regret @25 % (≤ 0.6×) on digits and, at 10 seeds, on charlm. At 25 % of the budget
MO-TPE has 7 random full-length trials; autotune has fewer (3–6 in the seeds inspected) plus
many stopped ones, and on these small tables (162 and 108 policies, 7–8 front points) the regret moves in plateaus, so the
median flips between neighbouring plateaus from seed set to seed set (0.56–0.67× on digits over
sampler start-up sizes 4–10 at 40 seeds). Not tried yet: Hyperband-style brackets (some trials
exempt from the first rung), a sampler that models the learning curve rather than the rung value.
Also missed at 10 seeds: digits' compute to reach MO-TPE's final hypervolume (0.48× at 40 seeds,
0.55× in the table above, target ≤ 0.5×). The ablation runs are `run_autotune(..., rungs_kw=...)`
in `scripts/bench_search.py` with one setting changed (`grace`, `promote_front`, `mature_at`)."""


def efficiency(d: dict) -> str:
    out = ["## What tuning buys", "", f"Command: `{d['command']}`  ",
           f"Machine: {d['machine']['cpu']}, {d['machine']['nproc']} cores; {_versions(d)}; {d['date']}", "",
           "A real `autotune search` per study (real training, objectives quality and train_time_s, "
           "defaults otherwise, tracking off); then, for each cost, the cheapest finished trial within "
           "0.5 pp of the default policy's accuracy (charlm: perplexity within 1 %) "
           "(`autotune.results.best_within`), as a ratio of the default policy's cost measured in the "
           "same study. Target: ≤ 0.5× in at least one cost on each study.", "",
           "| study | trials | default quality | cost | best ratio | its quality | knobs it changed |",
           "|---|---:|---:|---|---:|---:|---|"]
    verdicts = []
    for name, r in d["studies"].items():
        if r["baseline"] is None:
            out.append(f"| {name} | {r['trials']} | baseline did not finish | | | | |")
            verdicts.append(f"{name}: **missed** (no baseline)")
            continue
        bq = r["baseline"]["metrics"][r["quality"]]
        best_ratio = math.inf
        for cost in ("train_time_s", "train_flops", "infer_latency_ms"):
            b = r["best"].get(cost)
            if b is None:
                out.append(f"| {name} | {r['trials']} | {_f(bq, 4)} | {cost} | none within tolerance | | |")
                continue
            best_ratio = min(best_ratio, b["ratio"])
            knobs = ", ".join(f"`{k}={v}`" for k, v in sorted(b["knobs"].items())) or "(the default itself)"
            out.append(f"| {name} | {r['trials']} | {_f(bq, 4)} | {cost} | {_f(b['ratio'])}× | "
                       f"{_f(b['quality'], 4)} | {knobs} |")
        verdicts.append(f"{name}: best {_f(best_ratio)}× → {_ok(best_ratio <= 0.5)}")
    out += ["", "Target ≤ 0.5× in at least one cost: " + "; ".join(verdicts) + ".", ""]
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dir", type=Path, default=ROOT / "bench_out")
    ap.add_argument("--all-command", default="scripts/bench_all.sh")
    a = ap.parse_args()
    sections = {}
    for fname, title, fn in (("overhead.json", OURS[0], overhead), ("search.json", OURS[1], search),
                             ("efficiency.json", OURS[2], efficiency)):
        p = a.dir / fname
        if p.exists():
            sections[title] = fn(json.loads(p.read_text()))
    text = DOC.read_text() if DOC.exists() else "# Benchmarks\n"
    for title, body in sections.items():
        pattern = re.compile(rf"^{re.escape(title)}\n.*?(?=^## |\Z)", re.S | re.M)
        if pattern.search(text):
            text = pattern.sub(lambda _m: body.rstrip() + "\n\n", text)
        else:
            text = text.rstrip() + "\n\n" + body.rstrip() + "\n"
    if "Regenerate everything:" not in text:
        text = text.replace("# Benchmarks\n", f"# Benchmarks\n\nRegenerate everything: `make bench` "
                            f"(= `{a.all_command}`, ≤ 30 min on 2 cores).\n", 1)
    DOC.write_text(text)
    print(f"wrote {DOC}")


if __name__ == "__main__":
    main()
