"""The `autotune` command line (typer): parse, call, print; no logic of its own."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from autotune.errors import AutotuneError

app = typer.Typer(
    name="autotune",
    help="Tune the hyperparameters and efficiency policy of a PyTorch model.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console()
err_console = Console(stderr=True)


@app.callback()
def _root() -> None:
    """autotune: search, view and export efficiency policies for a PyTorch model."""


def fail(exc: AutotuneError) -> typer.Exit:
    """One paragraph on stderr, exit 2, no traceback."""
    err_console.print(f"[bold red]error:[/] {exc.render()}", highlight=False, soft_wrap=True)
    return typer.Exit(exc.exit_code)


def parse_sets(items: list[str] | None) -> dict[str, str]:
    from autotune.errors import PolicyError

    out: dict[str, str] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise PolicyError(
                f"--set {item!r} is not of the form KEY=VALUE.",
                fix="write e.g. --set prune.ratio=0.5",
            )
        out[key.strip()] = value.strip()
    return out


@app.command()
def train(
    model_file: Annotated[Path, typer.Argument(help="the model.py to train")],
    policy: Annotated[Path | None, typer.Option("--policy", "-p", help="policy YAML file")] = None,
    set_: Annotated[
        list[str] | None, typer.Option("--set", "-s", help="override a knob: KEY=VALUE (repeatable)")
    ] = None,
    json_out: Annotated[Path | None, typer.Option("--json", help="write the metrics as JSON")] = None,
    device: Annotated[str | None, typer.Option(help="cpu, cuda, cuda:1 … (default: CUDA if present)")] = None,
    threads: Annotated[int | None, typer.Option(help="torch threads (default: the CPUs available)")] = None,
) -> None:
    """Train once with a policy (the model's default policy when none is given) and print every cost."""
    from autotune.runs import default_policy, train_once

    try:
        from autotune.contract import load_model_file
        from autotune.policy import load_policy

        mf = load_model_file(model_file)
        base = load_policy(policy) if policy else default_policy(mf)
        pol = base.with_overrides(parse_sets(set_)) if set_ else base
        with console.status(f"training {mf.path.name} for {pol.epochs} epochs…"):
            result = train_once(mf, pol, device=device, threads=threads)
    except AutotuneError as exc:
        raise fail(exc) from None
    from autotune.display import metrics_table

    console.print(metrics_table(result.metrics, mf.quality_metric,
                                f"{mf.path} — {result.status}"))
    if result.status != "finished":
        err_console.print(f"[yellow]run {result.status}:[/] {result.error}")
    if json_out:
        payload = {"status": result.status, "policy": pol.to_dict(), "metrics": result.metrics,
                   "history": result.history, "model_sha256": mf.sha256}
        json_out.write_text(json.dumps(payload, indent=2, default=float))
        console.print(f"metrics written to {json_out}")
    if result.status != "finished":
        raise typer.Exit(1)


@app.command()
def search(
    model_file: Annotated[Path, typer.Argument(help="the model.py to tune")],
    space: Annotated[Path | None, typer.Option(help="search-space YAML (default: the model's SEARCH_SPACE)")] = None,
    name: Annotated[str | None, typer.Option(help="study name (default: the model's folder name)")] = None,
    trials: Annotated[int, typer.Option(help="trials in the study (baseline included)")] = 30,
    epochs: Annotated[int | None, typer.Option(help="epochs per trial (default: the model's policy)")] = None,
    objective: Annotated[list[str] | None, typer.Option(help="METRIC:max|min, repeatable")] = None,
    constraint: Annotated[list[str] | None, typer.Option(help='"METRIC<=V" or "METRIC>=V", repeatable')] = None,
    sampler: Annotated[str, typer.Option(help="tpe | nsga2 | nsga3 | random | gp | qmc")] = "tpe",
    cpus_per_trial: Annotated[float, typer.Option(help="CPUs per trial")] = 1.0,
    gpus_per_trial: Annotated[float, typer.Option(help="GPUs per trial (fractions pack trials)")] = 0.0,
    address: Annotated[str | None, typer.Option(help="join a Ray cluster: auto or HOST:PORT")] = None,
    time_budget: Annotated[str | None, typer.Option(help="stop after this long: 90s, 30m, 2h")] = None,
    seed: Annotated[int, typer.Option(help="sampler seed")] = 0,
    early_stop: Annotated[bool, typer.Option("--early-stop/--no-early-stop", help="multi-objective early stopping")] = True,
    rungs: Annotated[str | None, typer.Option(help='rung epochs "3,9,27" or "grace=3,eta=3"')] = None,
    tracking_uri: Annotated[str | None, typer.Option(help="MLflow tracking URI (default: embedded SQLite)")] = None,
    no_tracking: Annotated[bool, typer.Option("--no-tracking", help="don't record in MLflow")] = False,
    max_failures: Annotated[int, typer.Option(help="retries of a trial whose worker crashed")] = 1,
    trial_timeout: Annotated[str | None, typer.Option(help="fail a trial running longer than this")] = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="show Ray's own logs")] = False,
) -> None:
    """Run (or resume) a study: Ray Tune runs trials, Optuna samples policies, early stopping prunes."""
    from autotune.runner import SearchOptions, parse_duration, run_search

    try:
        opts = SearchOptions(
            model_file=model_file, trials=trials, epochs=epochs, name=name, space=space,
            objectives=objective or [], constraints=constraint or [], sampler=sampler,
            cpus_per_trial=cpus_per_trial, gpus_per_trial=gpus_per_trial, address=address,
            time_budget_s=parse_duration(time_budget), seed=seed, early_stop=early_stop,
            rungs=rungs, verbose=verbose, tracking_uri=tracking_uri, tracking=not no_tracking,
            max_failures=max_failures, trial_timeout_s=parse_duration(trial_timeout))
        outcome = run_search(opts, console)
    except AutotuneError as exc:
        raise fail(exc) from None
    if not outcome.complete:
        raise typer.Exit(130)


def main() -> None:  # pragma: no cover - console entry for python -m autotune
    app(prog_name="autotune")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
