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
# Wide enough for the front table when output is piped (rich assumes 80 columns there).
console = Console(width=None if sys.stdout.isatty() else 160)
err_console = Console(stderr=True)


@app.callback()
def _root() -> None:
    """autotune: search, view and export efficiency policies for a PyTorch model."""
    import logging

    # MLflow logs table creation at INFO on a new store; the user asked for a study, not that.
    logging.getLogger("mlflow").setLevel(logging.WARNING)
    logging.getLogger("alembic").setLevel(logging.WARNING)


def fail(exc: AutotuneError) -> typer.Exit:
    """One paragraph on stderr, exit 2, no traceback."""
    from rich.markup import escape

    # escaped: messages quote user text and grammars with [brackets] that rich would eat as markup
    err_console.print(f"[bold red]error:[/] {escape(exc.render())}", highlight=False, soft_wrap=True)
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
    force: Annotated[bool, typer.Option(
        "--force", help="train a policy exported from another model file")] = False,
) -> None:
    """Train once with a policy (the model's default policy when none is given) and print every cost."""
    from autotune.runs import default_policy, train_once

    try:
        from autotune.contract import load_model_file
        from autotune.policy import load_policy

        mf = load_model_file(model_file)
        if policy:
            from autotune.export import check_origin

            # An exported policy's objectives hold for the model file it was tuned on only.
            if warning := check_origin(policy, mf.path, mf.sha256, force):
                err_console.print(f"[yellow]warning:[/] {warning}", highlight=False)
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
    storage: Annotated[str | None, typer.Option(
        help="Ray's experiment storage: a shared path or URI (s3://, gs://, file://)")] = None,
    time_budget: Annotated[str | None, typer.Option(help="stop after this long: 90s, 30m, 2h")] = None,
    seed: Annotated[int, typer.Option(help="sampler seed")] = 0,
    early_stop: Annotated[bool, typer.Option("--early-stop/--no-early-stop",
                                             help="multi-objective early stopping")] = True,
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
            max_failures=max_failures, trial_timeout_s=parse_duration(trial_timeout),
            storage=storage)
        outcome = run_search(opts, console)
    except AutotuneError as exc:
        raise fail(exc) from None
    except KeyboardInterrupt:  # before trials ran (loading, Ray starting): nothing to lose
        err_console.print("interrupted; run the same command again to start or resume the study.",
                          highlight=False)
        raise typer.Exit(130) from None
    if not outcome.complete:
        raise typer.Exit(130)


@app.command()
def export(
    study: Annotated[str, typer.Argument(help="study name (see `autotune studies`)")],
    select: Annotated[str, typer.Option(
        "--select",
        help='knee | best:METRIC | "min:METRIC where METRIC>=V [and …]" | "max:…"')] = "knee",
    out: Annotated[Path, typer.Option(
        "--out", "-o", help="policy YAML file to write")] = Path("policy.yaml"),
    tracking_uri: Annotated[str | None, typer.Option(
        help="MLflow tracking URI (default: embedded SQLite)")] = None,
) -> None:
    """Write the policy of the trial a selection rule picks, with its objectives and provenance."""
    from autotune.export import export_policy

    try:
        done = export_policy(study, select, out, tracking_uri)
    except AutotuneError as exc:
        raise fail(exc) from None
    from rich.table import Table

    from autotune.display import fmt

    front, t = done.state.front, done.trial
    table = Table(title=f"{done.state.study.name}: trial {t.number} ({done.rule})")
    table.add_column("objective")
    table.add_column("value", justify="right")
    table.add_column("vs baseline", justify="right")
    for o in front.objectives:
        ratio = front.ratio(t, o.metric)
        table.add_row(f"{o.metric} ({o.direction})", fmt(t.metrics.get(o.metric)),
                      "—" if ratio is None else f"{ratio:.2f}×")
    console.print(table)
    prov = done.provenance
    if prov.get("mlflow_run_id"):
        console.print(f"MLflow run {prov['mlflow_run_id']}")
    else:
        err_console.print(f"[yellow]no MLflow run id:[/] {prov.get('mlflow_note')}",
                          highlight=False)
    if prov.get("model_note"):
        err_console.print(f"[yellow]warning:[/] {prov['model_note']}", highlight=False)
    console.print(f"policy written to {done.path} — train it with: autotune train "
                  f"{prov['model_file']} --policy {done.path}", highlight=False, soft_wrap=True)


@app.command()
def pareto(
    study: Annotated[str, typer.Argument(help="study name (see `autotune studies`)")],
    out: Annotated[Path | None, typer.Option(
        "--out", help="folder for pareto.csv/html/png (default: <study folder>/pareto)")] = None,
) -> None:
    """Print a study's Pareto front and cost ratios vs the baseline; write pareto.csv/html/png."""
    from autotune.artifacts import write_front_files
    from autotune.export import load_state, open_study
    from autotune.progress import front_table

    try:
        state = load_state(open_study(study))
    except AutotuneError as exc:
        raise fail(exc) from None
    name, front = state.study.name, state.front
    console.print(front_table(front, f"Pareto front of {name} ({len(state.views)} trials, "
                                     f"{len(front.eligible)} eligible)"))
    if not front.eligible:
        err_console.print(f"[yellow]study {name} has no finished, feasible trial yet: "
                          "the front is empty.[/]")
    files, _ = write_front_files(front, out or state.study.dir / "pareto", f"Pareto front of {name}")
    for path in files.values():
        console.print(f"wrote {path}", highlight=False, soft_wrap=True)


@app.command()
def studies() -> None:
    """List the studies in the home folder (AUTOTUNE_HOME, default ./autotune_studies)."""
    import datetime as dt

    from rich.table import Table

    from autotune.export import all_states
    from autotune.study import studies_home

    home = studies_home()
    states = all_states(home)
    if not states:
        console.print(f"No studies in {home}. Start one with: autotune search model.py",
                      highlight=False)
        return
    table = Table(title=f"Studies in {home}")
    for col, right in (("study", False), ("model", False), ("trials", True), ("finished", True),
                       ("stopped", True), ("failed", True), ("front", True), ("created", False)):
        table.add_column(col, justify="right" if right else "left")
    for s in states:
        if isinstance(s, tuple):
            table.add_row(s[0], f"[red]unreadable: {s[1]}[/]", *[""] * 6)
            continue
        c = s.counts
        created = dt.datetime.fromtimestamp(s.config.created).strftime("%Y-%m-%d %H:%M")
        table.add_row(s.study.name, s.config.model_file, f"{len(s.views)}/{s.config.trials}",
                      str(c["finished"]), str(c["stopped"]), str(c["failed"]),
                      str(len(s.front.members)), created)
    console.print(table)


@app.command()
def ui(
    port: Annotated[int, typer.Option(help="port of the MLflow UI")] = 5000,
    host: Annotated[str, typer.Option(
        help="interface to bind (default: this machine only)")] = "127.0.0.1",
    tracking_uri: Annotated[str | None, typer.Option(
        help="MLflow tracking URI (default: embedded SQLite)")] = None,
) -> None:
    """Open the MLflow UI on the study records (on 127.0.0.1 unless --host says otherwise)."""
    import subprocess

    from autotune.study import studies_home
    from autotune.tracking import _artifact_root, redact_uri, resolve_tracking_uri

    uri = resolve_tracking_uri(tracking_uri, studies_home())
    cmd = [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri,
           "--host", host, "--port", str(port), "--workers", "1"]
    if (root := _artifact_root(uri)) is not None:
        # Runs' artefacts live in <home>/mlartifacts; anything proxied must land there, not in cwd.
        cmd += ["--artifacts-destination", str(root)]
    if host not in ("127.0.0.1", "localhost", "::1"):
        err_console.print(f"[yellow]warning:[/] binding {host} exposes the MLflow UI (and its "
                          "REST API, which can modify and delete runs) to other machines, "
                          "without authentication.", highlight=False)
    shown = f"[{host}]" if ":" in host else host
    console.print(f"MLflow UI: http://{shown}:{port} (Ctrl-C to stop) — store {redact_uri(uri)}",
                  highlight=False, soft_wrap=True)
    import os
    import signal

    # Its own process group, so stopping it also stops the job workers mlflow ui starts.
    proc = subprocess.Popen(cmd, start_new_session=True)

    def _stop(signum: int, _frame: object) -> None:
        raise KeyboardInterrupt  # a SIGTERM to autotune must not orphan the server

    previous = signal.signal(signal.SIGTERM, _stop)
    try:
        code = proc.wait()
    except KeyboardInterrupt:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
        code = 0
    finally:
        signal.signal(signal.SIGTERM, previous)
    if code not in (0, -2, -15, 130):
        raise typer.Exit(code)


def main() -> None:  # pragma: no cover - console entry for python -m autotune
    app(prog_name="autotune")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
