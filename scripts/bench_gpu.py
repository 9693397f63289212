"""Benchmark on a CUDA GPU (issue 8): mixed precision against fp32, energy per trial, and four
trials per GPU (--gpus-per-trial 0.25) against one.

1. Precision: the digits and char-LM studies' default policies trained on the GPU in fp32, fp16
   (autocast + GradScaler) and bf16 (where the GPU has it), interleaved rounds; median training
   time (device-synchronised), speed-up against fp32, quality, peak CUDA memory and NVML energy.
2. Packing: the same 8-trial digits study (no early stopping, no tracking) with one trial per
   GPU and with four (0.25 GPU each); wall time, trials per minute and mean energy per trial.
   NVML counts the whole GPU, so with four trials sharing it each trial's energy_j includes its
   neighbours': compare the packed study's total energy per trial (GPU energy over the wall
   clock / trials), printed too, not the per-trial numbers.

    .venv/bin/python scripts/bench_gpu.py --rounds 3 --epochs 5
Prints "no CUDA device: skipped" and exits 0 where there is no GPU.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def precision_bench(model: Path, epochs: int, rounds: int) -> list[dict[str, object]]:
    from autotune.contract import load_model_file
    from autotune.runs import default_policy
    from autotune.trainer import train

    mf = load_model_file(model)
    modes = ["fp32", "fp16"] + (["bf16"] if torch.cuda.is_bf16_supported() else [])
    runs: dict[str, list[dict[str, float]]] = {m: [] for m in modes}
    train(mf, default_policy(mf).with_overrides({"epochs": 1}, source="warm-up"), device="cuda")
    for r in range(rounds):
        for mode in modes[r % len(modes):] + modes[: r % len(modes)]:  # rotate who goes first
            policy = default_policy(mf).with_overrides({"epochs": epochs, "precision": mode},
                                                       source="bench")
            result = train(mf, policy, device="cuda")
            assert result.status == "finished", result.error
            runs[mode].append(result.metrics)
    rows = []
    base = statistics.median(m["train_time_s"] for m in runs["fp32"])
    for mode in modes:
        t = statistics.median(m["train_time_s"] for m in runs[mode])
        energy = [m["energy_j"] for m in runs[mode] if "energy_j" in m]
        rows.append({"study": model.parent.name, "precision": mode, "train_time_s": t,
                     "speedup": base / t, "quality": statistics.median(
                         m[mf.quality_metric] for m in runs[mode]),
                     "metric": mf.quality_metric,
                     "peak_mem_mb": statistics.median(m["peak_mem_mb"] for m in runs[mode]),
                     "energy_j": statistics.median(energy) if energy else None})
    return rows


def _gpu_energy_j() -> float | None:
    try:
        import pynvml

        pynvml.nvmlInit()
        handle = pynvml.nvmlDeviceGetHandleByIndex(0)
        return pynvml.nvmlDeviceGetTotalEnergyConsumption(handle) / 1e3  # mJ → J
    except Exception:  # noqa: BLE001 - no NVML or no energy counter on this GPU
        return None


def packing_bench(trials: int, epochs: int) -> list[dict[str, object]]:
    from autotune.runner import SearchOptions, run_search
    from autotune.study import Study

    rows = []
    for per_trial in (1.0, 0.25):
        home = Path(tempfile.mkdtemp(prefix="bench-gpu-"))
        os.environ["AUTOTUNE_HOME"] = str(home)
        name = f"pack-{int(1 / per_trial)}"
        e0, t0 = _gpu_energy_j(), time.perf_counter()
        run_search(SearchOptions(model_file=REPO / "studies" / "digits" / "model.py", name=name,
                                 trials=trials, epochs=epochs, gpus_per_trial=per_trial,
                                 cpus_per_trial=1, early_stop=False, tracking=False))
        wall, e1 = time.perf_counter() - t0, _gpu_energy_j()
        views = Study(name, home).trial_views()
        per = [v.metrics["energy_j"] for v in views if "energy_j" in v.metrics]
        rows.append({"trials_per_gpu": int(1 / per_trial), "wall_s": wall,
                     "trials_per_min": 60 * len(views) / wall,
                     "gpu_energy_per_trial_j": (e1 - e0) / len(views) if e0 and e1 else None,
                     "mean_trial_energy_j": statistics.mean(per) if per else None})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--trials", type=int, default=8)
    args = ap.parse_args()
    if not torch.cuda.is_available():
        print("no CUDA device: skipped")
        return
    print(f"GPU: {torch.cuda.get_device_name(0)}, torch {torch.__version__}")
    print("\n| study | precision | train s (median) | speed-up vs fp32 | quality | peak MiB | "
          "energy J |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for study in ("digits", "charlm"):
        model = REPO / "studies" / study / "model.py"
        for r in precision_bench(model, args.epochs, args.rounds):
            energy = f"{r['energy_j']:.1f}" if r["energy_j"] is not None else "n/a"
            print(f"| {r['study']} | {r['precision']} | {r['train_time_s']:.2f} | "
                  f"{r['speedup']:.2f}× | {r['metric']} {r['quality']:.4g} | "
                  f"{r['peak_mem_mb']:.0f} | {energy} |")
    print("\n| trials per GPU | wall s | trials/min | GPU energy per trial J | "
          "mean per-trial energy_j |")
    print("|---:|---:|---:|---:|---:|")
    for r in packing_bench(args.trials, args.epochs):
        def f(v: object) -> str:
            return f"{v:.1f}" if isinstance(v, float) else "n/a"
        print(f"| {r['trials_per_gpu']} | {r['wall_s']:.1f} | {r['trials_per_min']:.2f} | "
              f"{f(r['gpu_energy_per_trial_j'])} | {f(r['mean_trial_energy_j'])} |")


if __name__ == "__main__":
    main()
