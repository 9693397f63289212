"""The front as files: pareto.csv (pandas), pareto.html (interactive plotly), pareto.png (matplotlib)."""

from __future__ import annotations

import json
from pathlib import Path

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


def write_front_files(front: Front, folder: Path, title: str) -> dict[str, Path]:
    """Write pareto.csv/html/png into `folder`; returns name → path of what was written."""
    folder.mkdir(parents=True, exist_ok=True)
    df = front_frame(front)
    out = {"pareto.csv": folder / "pareto.csv"}
    df.to_csv(out["pareto.csv"], index=False)
    if len(front.objectives) < 2 or df.empty:
        return out
    x, y = front.objectives[1].metric, front.objectives[0].metric
    out["pareto.html"] = folder / "pareto.html"
    _html(df, x, y, title, out["pareto.html"])
    out["pareto.png"] = folder / "pareto.png"
    _png(df, x, y, title, out["pareto.png"])
    return out


def _html(df: pd.DataFrame, x: str, y: str, title: str, path: Path) -> None:
    import plotly.graph_objects as go

    def trace(mask: pd.Series, name: str, **marker: object) -> go.Scatter:
        part = df[mask]
        return go.Scatter(
            x=part[x], y=part[y], mode="markers", name=name, marker=marker,
            customdata=part[["trial", "policy"]].values,
            hovertemplate="trial %{customdata[0]}<br>" + f"{x}=%{{x}}<br>{y}=%{{y}}"
            "<br>%{customdata[1]}<extra></extra>")

    fig = go.Figure([
        trace(~df.on_front & ~df.baseline, "dominated", color="lightgray", size=8),
        trace(df.on_front & ~df.baseline, "Pareto front", color="crimson", size=11),
        trace(df.baseline, "baseline (default policy)", color="black", size=14, symbol="star"),
    ])
    front = df[df.on_front].sort_values(x)
    fig.add_trace(go.Scatter(x=front[x], y=front[y], mode="lines", line={"shape": "hv", "color": "crimson"},
                             showlegend=False, hoverinfo="skip"))
    fig.update_layout(title=title, xaxis_title=x, yaxis_title=y, template="plotly_white")
    fig.write_html(path, include_plotlyjs=True, full_html=True)


def _png(df: pd.DataFrame, x: str, y: str, title: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")  # no display on servers and in CI
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
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
    plt.close(fig)
