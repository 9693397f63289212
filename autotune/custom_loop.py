"""The escape hatch: model.py's own `train(policy, report)` loop, run, timed and measured by autotune."""

from __future__ import annotations

import math
import random
import sys
import time
from typing import TYPE_CHECKING, Any

from autotune import costs
from autotune.contract import ModelFile
from autotune.policy import Policy
from autotune.runs import Reporter, RunResult

if TYPE_CHECKING:
    import torch


def run_custom(mf: ModelFile, policy: Policy, report: Reporter | None,
               device: torch.device | str = "cpu") -> RunResult:
    """Run the user's loop; autotune times it and measures what it returns.

    Called by trainer.train after its torch set-up (device, threads, seeds), or straight from a
    Ray worker when model.py never imported torch: such a worker then never imports it either
    (~1 s of CPU each, scripts/bench_overhead.py), and only Python's own RNG is seeded.
    """
    if "torch" not in sys.modules:  # trainer.train has seeded everything otherwise
        random.seed(policy.seed)
        if (np := sys.modules.get("numpy")) is not None:
            np.random.seed(policy.seed % 2**32)
    history: list[dict[str, float]] = []
    t0 = time.perf_counter()

    def user_report(metrics: dict[str, float] | None = None, /, **kw: float) -> None:
        row = {**(metrics or {}), **kw}
        row = {k: float(v) for k, v in row.items()}
        row.setdefault("epoch", float(len(history) + 1))
        row.setdefault("train_time_s", time.perf_counter() - t0)
        history.append(row)
        if report:
            report(dict(row))

    memory, energy = costs.PeakMemory(device), costs.EnergyMeter(device)
    with memory, energy:
        returned: Any = mf.custom_train(policy, user_report)
    costs.synchronize(device)
    final = dict(history[-1]) if history else {}
    final["train_time_s"] = time.perf_counter() - t0
    final["peak_mem_mb"] = memory.peak_mb
    if energy.joules is not None:
        final["energy_j"] = energy.joules
    torch_mod = sys.modules.get("torch")
    if torch_mod is not None and isinstance(returned, torch_mod.nn.Module):
        params, nonzero = costs.param_counts(returned)
        final.update(params=float(params), nonzero_params=float(nonzero),
                     model_size_mb=costs.model_size_mb(returned))
    quality = final.get(mf.quality_metric)
    status = "finished" if quality is not None and math.isfinite(quality) else "diverged"
    return RunResult(status, final, history, None if status == "finished" else
                     f"the custom loop's last report has no finite {mf.quality_metric!r}")
