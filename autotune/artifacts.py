"""The front as files: pareto.csv (pandas), pareto.html (interactive plotly), pareto.png (matplotlib)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd

from autotune.results import Front


def front_frame(front: Front) -> pd.DataFrame:
    """One row per eligible trial: objectives, rank, baseline flag, cost ratios and the policy."""
    rows = []
    for t in front.eligible:
        row: dict[str, object] = {"trial": t.number, "pareto_rank": front.ranks[t.number],
                                  "on_front": front.ranks[t.number] == 0, "baseline": t.baseline}
        for o in front.objectives:
            row[o.metric] = t.metrics.get(o.metric)
            ratio = front.ratio(t, o.metric)
            if o.direction == "min" and ratio is not None:
                row[f"{o.metric}_vs_baseline"] = ratio
        row["policy"] = json.dumps(t.policy, sort_keys=True)
        rows.append(row)
    return pd.DataFrame(rows)


def write_front_files(front: Front, folder: Path, title: str,
                      png: bool = True) -> tuple[dict[str, Path], dict[str, Any] | None]:
    """Write pareto.csv/html (and pareto.png) into `folder`; returns name → path of what was
    written, and how to draw pareto.png from pareto.csv (draw_front_png's arguments; None when
    the front has no picture: one objective, or no eligible trial)."""
    folder.mkdir(parents=True, exist_ok=True)
    df = front_frame(front)
    out = {"pareto.csv": folder / "pareto.csv"}
    df.to_csv(out["pareto.csv"], index=False)
    if len(front.objectives) < 2 or df.empty:
        return out, None
    x, y = front.objectives[1].metric, front.objectives[0].metric
    out["pareto.html"] = folder / "pareto.html"
    _html(df, x, y, title, out["pareto.html"])
    picture = {"x": x, "y": y, "title": title}
    if png:
        out["pareto.png"] = folder / "pareto.png"
        _png(df, x, y, title, out["pareto.png"])
    return out, picture


def draw_front_png(csv: Path, out: Path, x: str, y: str, title: str) -> None:
    """pareto.png from a pareto.csv that write_front_files wrote. The MLflow sender process draws
    it at a study's end: matplotlib's import (~0.5 s of CPU) there, at idle priority and ahead of
    time (warm_up), not on the driver while Ray shuts down (scripts/bench_overhead.py)."""
    _png(pd.read_csv(csv), x, y, title, out)


def warm_up() -> None:
    """Import what draw_front_png needs."""
    import matplotlib.backends.backend_agg  # noqa: F401 - Figure.savefig's canvas
    import matplotlib.figure  # noqa: F401


def _html(df: pd.DataFrame, x: str, y: str, title: str, path: Path) -> None:
    # Plain figure dicts written unvalidated: building it through plotly.graph_objects (validators,
    # the plotly_white template) took ~1 s at the end of every study (scripts/bench_overhead.py).
    import plotly.io as pio

    def trace(mask: pd.Series, name: str, **marker: object) -> dict[str, object]:
        part = df[mask]
        return {"type": "scatter", "x": part[x].tolist(), "y": part[y].tolist(), "mode": "markers",
                "name": name, "marker": marker,
                "customdata": part[["trial", "policy"]].values.tolist(),
                "hovertemplate": "trial %{customdata[0]}<br>" + f"{x}=%{{x}}<br>{y}=%{{y}}"
                "<br>%{customdata[1]}<extra></extra>"}

    front = df[df.on_front].sort_values(x)
    data = [
        trace(~df.on_front & ~df.baseline, "dominated", color="lightgray", size=8),
        trace(df.on_front & ~df.baseline, "Pareto front", color="crimson", size=11),
        trace(df.baseline, "baseline (default policy)", color="black", size=14, symbol="star"),
        {"type": "scatter", "x": front[x].tolist(), "y": front[y].tolist(), "mode": "lines",
         "line": {"shape": "hv", "color": "crimson"}, "showlegend": False, "hoverinfo": "skip"},
    ]
    axis = {"gridcolor": "#ebf0f8", "zeroline": False}
    layout = {"title": {"text": title}, "xaxis": {"title": {"text": x}, **axis},
              "yaxis": {"title": {"text": y}, **axis}, "plot_bgcolor": "white",
              "paper_bgcolor": "white"}
    pio.write_html({"data": data, "layout": layout}, str(path), include_plotlyjs=True,
                   full_html=True, validate=False)


def _png(df: pd.DataFrame, x: str, y: str, title: str, path: Path) -> None:
    # matplotlib's object API, not pyplot: no global figure state (a study writes these files from
    # a thread while Ray shuts down) and no GUI backend to pick on a server.
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 4.5), dpi=120)
    ax = fig.subplots()
    dom = df[~df.on_front]
    ax.scatter(dom[x], dom[y], c="lightgray", label="dominated")
    front = df[df.on_front].sort_values(x)
    ax.step(front[x], front[y], where="post", c="crimson", lw=1)
    ax.scatter(front[x], front[y], c="crimson", label="Pareto front")
    base = df[df.baseline]
    ax.scatter(base[x], base[y], c="black", marker="*", s=180, label="baseline")
    ax.set_xlabel(x)
    ax.set_ylabel(y)
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
