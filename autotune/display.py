"""Rich rendering shared by the commands: metric tables and number formatting."""

from __future__ import annotations

import math
from collections.abc import Mapping

from rich.table import Table

from autotune.costs import COST_METRICS

_UNITS = {
    "train_time_s": "s",
    "train_flops": "FLOP",
    "infer_flops": "FLOP",
    "infer_latency_ms": "ms (batch 1)",
    "infer_latency_batch_ms": "ms (serving batch)",
    "model_size_mb": "MB",
    "peak_mem_mb": "MiB",
    "energy_j": "J",
}


def fmt(value: float | int | str | None) -> str:
    if value is None:
        return "—"
    if isinstance(value, str):
        return value
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    v = float(value)
    if v != 0 and (abs(v) >= 1e6 or abs(v) < 1e-3):
        return f"{v:.3e}"
    if v == int(v) and abs(v) >= 100:
        return f"{int(v):,}"
    return f"{v:.4g}"


def metrics_table(metrics: Mapping[str, float], quality: str, title: str) -> Table:
    """Quality first, then every cost meter (absent ones say so instead of being invented)."""
    table = Table(title=title, show_lines=False)
    table.add_column("metric")
    table.add_column("value", justify="right")
    table.add_column("unit")
    table.add_row(f"[bold]{quality}[/]", f"[bold]{fmt(metrics.get(quality))}[/]", "quality")
    quality_like = [k for k in metrics if k not in COST_METRICS and k not in (quality, "epoch", "lr")
                    and k not in _UNITS]
    for k in quality_like:
        table.add_row(k, fmt(metrics[k]), "")
    for k in (*COST_METRICS, "infer_flops"):
        if k in metrics:
            table.add_row(k, fmt(metrics[k]), _UNITS.get(k, ""))
        elif k == "energy_j":
            table.add_row(k, "not measurable here", "(no NVML/RAPL counter)")
    return table
