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


def main() -> None:  # pragma: no cover - console entry for python -m autotune
    app(prog_name="autotune")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
