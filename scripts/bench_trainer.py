"""Benchmark: the managed trainer's overhead against a hand-written torch loop, and bf16 vs fp32.

1. Managed vs hand loop: the digits study (model, data, batch size, AdamW + cosine, threads),
   fp32, both in this process, interleaved rounds alternating which goes first. Only the
   training loop is timed: the trainer's per-epoch `train_time_s` (evaluation, FLOP counting
   and the final deployed measurement are outside it) against the same clock around the hand
   loop.
2. bf16 autocast vs fp32: training steps/s and inference batches/s of the digits CNN, the
   regression MLP and a 1024-wide MLP, interleaved; inference also with bf16 weights (what
   `precision=bf16` deploys).

    .venv/bin/python scripts/bench_trainer.py --threads 2 --rounds 5 --write docs/BENCHMARKS.md
"""

from __future__ import annotations

import argparse
import datetime as dt
import math
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from autotune.contract import ModelFile, load_model_file  # noqa: E402
from autotune.policy import Policy  # noqa: E402
from autotune.runs import default_policy  # noqa: E402
from autotune.trainer import seed_everything, train  # noqa: E402

# ---------------------------------------------------------------------------------------------
# 1. managed trainer vs a minimal hand loop


def managed_run(mf: ModelFile, policy: Policy, threads: int) -> tuple[list[float], int]:
    """(training-loop seconds of each epoch, optimizer steps an epoch) of one managed run."""
    result = train(mf, policy, threads=threads, device="cpu")
    assert result.status == "finished", result.error
    train_ds, _ = mf.datasets()
    cumulative = [row["train_time_s"] for row in result.history]
    epochs = [b - a for a, b in zip([0.0, *cumulative], cumulative, strict=False)]
    return epochs, math.ceil(len(train_ds) / policy.batch_size)


def hand_run(mf: ModelFile, policy: Policy, threads: int) -> tuple[list[float], int]:
    """The same training written by hand: what a user would write without autotune."""
    torch.set_num_threads(threads)
    seed_everything(policy.seed)
    train_ds, _ = mf.datasets()
    x, y = train_ds.tensors
    model = mf.build_model(policy.model)
    opt = torch.optim.AdamW(model.parameters(), lr=policy.optimizer.lr,
                            weight_decay=policy.optimizer.weight_decay)
    bs = policy.batch_size
    steps_per_epoch = math.ceil(len(x) / bs)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=policy.epochs * steps_per_epoch)
    gen = torch.Generator().manual_seed(policy.seed)
    epochs = []
    for _ in range(policy.epochs):
        model.train()
        t0 = time.perf_counter()
        order = torch.randperm(len(x), generator=gen)
        for i in range(0, len(x), bs):
            idx = order[i : i + bs]
            loss = nn.functional.cross_entropy(model(x[idx]), y[idx])
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            sched.step()
        epochs.append(time.perf_counter() - t0)
        model.eval()  # the trainer evaluates between epochs, outside its timer; so does this
        with torch.inference_mode():
            model(x[:256])
    return epochs, steps_per_epoch


def bench_overhead(threads: int, rounds: int, epochs: int) -> dict[str, object]:
    mf = load_model_file(REPO / "studies" / "digits" / "model.py")
    policy = default_policy(mf).with_overrides({"epochs": epochs}, source="benchmark")
    runners: dict[str, Callable[[ModelFile, Policy, int], tuple[list[float], int]]] = {
        "managed": managed_run, "hand": hand_run}
    managed_run(mf, policy, threads)  # warm-up: imports, first-call allocations
    hand_run(mf, policy, threads)
    sps: dict[str, list[float]] = {"managed": [], "hand": []}
    ratios = []
    for r in range(rounds):
        order = ["managed", "hand"] if r % 2 == 0 else ["hand", "managed"]
        this: dict[str, float] = {}
        for name in order:
            # Steps/s of the run's median epoch: robust to a burst of load from other processes.
            epochs, steps = runners[name](mf, policy, threads)
            this[name] = steps / statistics.median(epochs)
            sps[name].append(this[name])
        ratios.append(this["managed"] / this["hand"])
        print(f"round {r + 1}: managed {this['managed']:.1f} steps/s, "
              f"hand {this['hand']:.1f} steps/s, ratio {ratios[-1]:.3f}", flush=True)
    return {"sps": sps, "ratios": ratios, "policy": policy}


# ---------------------------------------------------------------------------------------------
# 2. bf16 autocast vs fp32


def _mlp(width: int, depth: int, n_in: int, n_out: int) -> nn.Module:
    layers: list[nn.Module] = []
    for i in range(depth):
        layers += [nn.Linear(n_in if i == 0 else width, width), nn.ReLU()]
    return nn.Sequential(*layers, nn.Linear(width, n_out))


def _models() -> list[tuple[str, Callable[[], nn.Module], tuple[int, ...], int, int, str]]:
    digits = load_model_file(REPO / "studies" / "digits" / "model.py")
    reg = load_model_file(REPO / "studies" / "regression" / "model.py")
    return [
        ("digits CNN (width 16)", lambda: digits.build_model({}), (1, 8, 8), 10, 64, "ce"),
        ("regression MLP (64×2)", lambda: reg.build_model({}), (10,), 1, 32, "mse"),
        ("MLP 1024×3", lambda: _mlp(1024, 3, 512, 10), (512,), 10, 256, "ce"),
    ]


def _train_sps(build: Callable[[], nn.Module], shape: tuple[int, ...], n_out: int, batch: int,
               loss_kind: str, bf16: bool, seconds: float) -> float:
    torch.manual_seed(0)
    model = build().train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    x = torch.randn(batch, *shape)
    y = torch.randint(0, n_out, (batch,)) if loss_kind == "ce" else torch.randn(batch, n_out)
    loss_f = nn.functional.cross_entropy if loss_kind == "ce" else nn.functional.mse_loss
    ctx = (lambda: torch.autocast("cpu", dtype=torch.bfloat16)) if bf16 else _null

    def step() -> None:
        with ctx():
            loss = loss_f(model(x).float(), y)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return _rate(step, seconds)


def _infer_bps(build: Callable[[], nn.Module], shape: tuple[int, ...], batch: int, mode: str,
               seconds: float) -> float:
    torch.manual_seed(0)
    model = build().eval()
    x = torch.randn(batch, *shape)
    if mode == "bf16 weights":
        model, x = model.to(torch.bfloat16), x.to(torch.bfloat16)
    autocast = mode == "bf16 autocast"
    ctx = (lambda: torch.autocast("cpu", dtype=torch.bfloat16)) if autocast else _null

    def step() -> None:
        with torch.inference_mode(), ctx():
            model(x)

    return _rate(step, seconds)


class _null:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


def _rate(step: Callable[[], None], seconds: float) -> float:
    for _ in range(3):
        step()
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        step()
        n += 1
    return n / (time.perf_counter() - t0)


def bench_bf16(threads: int, rounds: int, seconds: float) -> list[dict[str, object]]:
    torch.set_num_threads(threads)
    rows = []
    for name, build, shape, n_out, batch, loss_kind in _models():
        train_ratio, infer_auto, infer_w = [], [], []
        fp32_train, fp32_infer = [], []
        for r in range(rounds):
            pair = [False, True] if r % 2 == 0 else [True, False]
            tr = {b: _train_sps(build, shape, n_out, batch, loss_kind, b, seconds) for b in pair}
            modes = ["fp32", "bf16 autocast", "bf16 weights"]
            modes = modes if r % 2 == 0 else modes[::-1]
            inf = {m: _infer_bps(build, shape, batch, m, seconds) for m in modes}
            train_ratio.append(tr[True] / tr[False])
            infer_auto.append(inf["bf16 autocast"] / inf["fp32"])
            infer_w.append(inf["bf16 weights"] / inf["fp32"])
            fp32_train.append(tr[False])
            fp32_infer.append(inf["fp32"])
        row = {"model": name, "batch": batch,
               "fp32_train": statistics.median(fp32_train),
               "train": statistics.median(train_ratio),
               "fp32_infer": statistics.median(fp32_infer),
               "infer_autocast": statistics.median(infer_auto),
               "infer_weights": statistics.median(infer_w)}
        print(f"{name}: bf16 train ×{row['train']:.2f}, "
              f"infer autocast ×{row['infer_autocast']:.2f}, "
              f"bf16 weights ×{row['infer_weights']:.2f}", flush=True)
        rows.append(row)
    return rows


# ---------------------------------------------------------------------------------------------
# report


def machine() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        model = next(line.split(":", 1)[1].strip() for line in out.splitlines()
                     if line.startswith("Model name"))
    except (OSError, subprocess.CalledProcessError, StopIteration):
        model = platform.processor() or "unknown CPU"
    import os

    try:
        flags = set(Path("/proc/cpuinfo").read_text().split())
    except OSError:
        flags = set()
    bf16 = [f for f in ("avx512_bf16", "amx_bf16") if f in flags] or ["none"]
    return f"{model}, {os.cpu_count()} cores, torch {torch.__version__} " \
           f"(CPU capability {torch.backends.cpu.get_cpu_capability()}; " \
           f"bf16 CPU flags: {', '.join(bf16)})"


def render(args: argparse.Namespace, overhead: dict[str, object],
           bf16: list[dict[str, object]]) -> str:
    sps = overhead["sps"]
    ratios = overhead["ratios"]
    assert isinstance(sps, dict) and isinstance(ratios, list)
    policy = overhead["policy"]
    assert isinstance(policy, Policy)
    cmd = (f".venv/bin/python scripts/bench_trainer.py --threads {args.threads} "
           f"--rounds {args.rounds} --epochs {args.epochs} --seconds {args.seconds}"
           + (f" --write {args.write}" if args.write else ""))
    lines = [
        "## Trainer",
        "",
        f"Command: `{cmd}`  ",
        f"Machine: {machine()}, {args.threads} torch threads  ",
        f"Date: {dt.date.today().isoformat()}",
        "",
        "### Managed trainer vs a hand-written loop (digits study, fp32)",
        "",
        f"Same model, data, batch size {policy.batch_size}, AdamW (lr {policy.optimizer.lr}) + "
        f"cosine, {policy.epochs} epochs a run, {args.rounds} interleaved rounds alternating "
        "which goes first. Only the training loop is timed (the trainer's per-epoch "
        "`train_time_s`); "
        "a run's rate is its steps per epoch over its median epoch time.",
        "",
        "| | steps/s (median) | min | max |",
        "|---|---:|---:|---:|",
    ]
    for name in ("managed", "hand"):
        v = sps[name]
        lines.append(f"| {name} | {statistics.median(v):.1f} | {min(v):.1f} | {max(v):.1f} |")
    med = statistics.median(ratios)
    lines += [
        "",
        f"**Median ratio managed / hand: {med:.3f}×** (per round: "
        + ", ".join(f"{r:.3f}" for r in ratios) + f"; target ≥ 0.95×: "
        f"{'met' if med >= 0.95 else 'NOT met'}).",
        "",
        "Overhead found and fixed with this benchmark: on CPU, `costs.PeakMemory` sampled RSS "
        "from a Python thread every 5 ms beside the training loop, costing ~3 % of the loop "
        "on 2 cores (median managed/hand ratio 0.954× before; A/B of the trainer alone: 274 "
        "vs 283 steps/s). It now reads the kernel's peak RSS (VmHWM, reset through "
        "/proc/self/clear_refs) and starts no thread where that is available.",
        "",
        "### bf16 autocast vs fp32 on this CPU",
        "",
        f"Median over {args.rounds} interleaved rounds of {args.seconds} s each; speed-up = bf16 "
        "rate / fp32 rate (> 1: bf16 faster). Inference with autocast, and with the model cast "
        "to bf16 (what `precision=bf16` deploys).",
        "",
        "| model | batch | fp32 train steps/s | bf16 train | fp32 infer batches/s "
        "| bf16 autocast infer | bf16 weights infer |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for row in bf16:
        lines.append(
            f"| {row['model']} | {row['batch']} | {row['fp32_train']:.0f} | ×{row['train']:.2f} "
            f"| {row['fp32_infer']:.0f} | ×{row['infer_autocast']:.2f} "
            f"| ×{row['infer_weights']:.2f} |")
    return "\n".join(lines) + "\n"


def write_section(path: Path, section: str) -> None:
    """Replace the file's '## Trainer' section (or append it), leaving other sections alone."""
    text = path.read_text() if path.exists() else "# Benchmarks\n\n"
    lines = text.splitlines(keepends=True)
    start = next((i for i, line in enumerate(lines) if line.strip() == "## Trainer"), None)
    if start is None:
        text = text.rstrip("\n") + "\n\n" + section
    else:
        end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")),
                   len(lines))
        text = "".join(lines[:start]) + section + ("\n" + "".join(lines[end:]) if end < len(lines)
                                                   else "")
    path.write_text(text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=6, help="epochs per digits run")
    parser.add_argument("--seconds", type=float, default=1.0, help="per bf16/fp32 measurement")
    parser.add_argument("--write", type=Path, help="markdown file whose '## Trainer' to replace")
    parser.add_argument("--skip-bf16", action="store_true")
    args = parser.parse_args()
    overhead = bench_overhead(args.threads, args.rounds, args.epochs)
    bf16 = [] if args.skip_bf16 else bench_bf16(args.threads, args.rounds, args.seconds)
    section = render(args, overhead, bf16)
    print()
    print(section)
    if args.write:
        write_section(args.write, section)
        print(f"written to {args.write}")


if __name__ == "__main__":
    main()
