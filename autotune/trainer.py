"""One training run: build the model from model.py, apply the policy, train, measure every cost, report per epoch."""

from __future__ import annotations

import math
import os
import random
import time
from collections.abc import Callable, Collection, Iterator
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, TensorDataset

from autotune import costs
from autotune.contract import ModelFile
from autotune.errors import ContractError
from autotune.knobs import precision as prec
from autotune.knobs.optim import current_lr, make_optimizer, make_scheduler, rebuild_after_surgery
from autotune.knobs.pruning import Pruner
from autotune.policy import Policy
from autotune.runs import Reporter, RunResult


def pick_device(requested: str | None = None) -> torch.device:
    if requested:
        return torch.device(requested)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def available_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def batches(ds: Dataset, batch_size: int, device: torch.device, *, shuffle: bool,
            generator: torch.Generator | None = None) -> Iterator[tuple[Any, Any]]:
    """Mini-batches; in-memory TensorDatasets are sliced on the device instead of going through a DataLoader."""
    if isinstance(ds, TensorDataset) and len(ds.tensors) == 2:
        x, y = ds.tensors
        n = len(x)
        order = torch.randperm(n, generator=generator) if shuffle else torch.arange(n)
        order = order.to(x.device)
        for i in range(0, n, batch_size):
            idx = order[i : i + batch_size]
            yield x[idx].to(device, non_blocking=True), y[idx].to(device, non_blocking=True)
        return
    loader = DataLoader(ds, batch_size=batch_size, shuffle=shuffle, generator=generator)
    for xb, yb in loader:
        yield _to(xb, device), _to(yb, device)


def _to(value: Any, device: torch.device, dtype: torch.dtype | None = None) -> Any:
    if torch.is_tensor(value):
        if dtype is not None and value.is_floating_point():
            return value.to(device, dtype)
        return value.to(device)
    if isinstance(value, tuple | list):
        return type(value)(_to(v, device, dtype) for v in value)
    return value


def _first(ds: Dataset, n: int) -> tuple[Any, Any]:
    n = min(n, len(ds))
    if isinstance(ds, TensorDataset):
        return ds.tensors[0][:n], ds.tensors[1][:n]
    xs, ys = zip(*(ds[i] for i in range(n)), strict=True)
    return torch.stack([torch.as_tensor(x) for x in xs]), torch.stack([torch.as_tensor(y) for y in ys])


def evaluate(mf: ModelFile, model: torch.nn.Module, ds: Dataset, device: torch.device,
             batch_size: int, ctx: Callable[[], Any], input_dtype: torch.dtype | None = None,
             label_smoothing: float = 0.0) -> dict[str, float]:
    """Validation metrics of `model`: the user's metrics on all outputs at once, plus val_loss."""
    model.eval()
    outs, targets = [], []
    with torch.inference_mode(), ctx():
        for xb, yb in batches(ds, batch_size, device, shuffle=False):
            outs.append(model(_to(xb, device, input_dtype)).float().cpu())
            targets.append(yb.cpu())
    out, tgt = torch.cat(outs), torch.cat(targets)
    result = mf.metrics(out, tgt)
    result["val_loss"] = float(mf.loss(out, tgt))
    return result


def train(mf: ModelFile, policy: Policy, *, report: Reporter | None = None,
          device: str | None = None, threads: int | None = None,
          epoch_costs: Collection[str] = ()) -> RunResult:
    """Train model.py under `policy`; a custom `train(policy, report)` loop is run and measured instead.

    `epoch_costs` names serving costs (params, infer_latency_ms, …) to measure on the current model
    after every epoch too, for schedulers that compare trials on them before training ends.
    """
    dev = pick_device(device)
    torch.set_num_threads(threads or available_cpus())
    prec.check_runnable(policy.precision, dev)
    seed_everything(policy.seed)
    if mf.custom_loop:
        from autotune.custom_loop import run_custom

        return run_custom(mf, policy, report, dev)
    return _run_managed(mf, policy, report, dev, set(epoch_costs))


def _run_managed(mf: ModelFile, policy: Policy, report: Reporter | None,
                 dev: torch.device, epoch_costs: set[str]) -> RunResult:
    train_ds, val_ds = mf.datasets()
    model = mf.build_model(policy.model).to(dev)
    ex_x, ex_y = (_to(t, dev) for t in _first(train_ds, policy.batch_size))
    pruner = Pruner(policy, model, ex_x[:2]) if policy.prune.method != "none" else None
    steps_per_epoch = max(1, math.ceil(math.ceil(len(train_ds) / policy.batch_size) / policy.grad_accum))
    optimizer = make_optimizer(policy, model.parameters())
    scheduler = make_scheduler(policy, optimizer, steps_per_epoch)
    scaler = prec.grad_scaler(policy.precision, dev)
    ls = policy.label_smoothing
    ctx = lambda: policy.autocast(dev)  # noqa: E731 - a fresh context each use
    loss_of = lambda out, y: mf.loss(out, y, ls)  # noqa: E731
    # FLOPs scale with samples, so one counted step per model shape gives the whole run's FLOPs.
    try:
        flops_per_sample = costs.train_step_flops(model, loss_of, ex_x, ex_y) / len(ex_x)
    except Exception as exc:  # the first forward/backward is where shape mistakes surface
        raise ContractError(
            f"{mf.path}: the model failed on a training batch of shape {tuple(ex_x.shape)}: "
            f"{type(exc).__name__}: {exc}.",
            fix="check that build_model's input and output shapes match datasets() and loss_fn.",
        ) from None
    gen = torch.Generator().manual_seed(policy.seed)
    check_every = 1 if dev.type == "cpu" else 25  # a finite-check syncs the GPU: not every step there
    history: list[dict[str, float]] = []
    train_time = flops = 0.0
    status, error = "finished", None
    memory, energy = costs.PeakMemory(dev), costs.EnergyMeter(dev)
    with memory, energy:
        for epoch in range(policy.epochs):
            if pruner is not None and epoch in pruner.plan:
                pruner.prune_to(pruner.plan[epoch])
                if pruner.changes_shapes:
                    optimizer, scheduler = rebuild_after_surgery(
                        policy, model, optimizer, scheduler, steps_per_epoch)
                    flops_per_sample = costs.train_step_flops(model, loss_of, ex_x, ex_y) / len(ex_x)
            model.train()
            costs.synchronize(dev)
            t0 = time.perf_counter()
            loss_sum = torch.zeros((), device=dev)
            seen = 0
            for step, (xb, yb) in enumerate(batches(train_ds, policy.batch_size, dev, shuffle=True,
                                                   generator=gen)):
                with ctx():
                    loss = loss_of(model(xb), yb)
                if step % check_every == 0 and not torch.isfinite(loss):
                    status, error = "diverged", f"loss became {loss.item()} at epoch {epoch + 1}"
                    break
                (scaler.scale(loss / policy.grad_accum) if scaler else loss / policy.grad_accum).backward()
                loss_sum += loss.detach() * len(yb)
                seen += len(yb)
                if (step + 1) % policy.grad_accum == 0 or seen == len(train_ds):
                    _optimizer_step(policy, model, optimizer, scaler)
                    scheduler.step()
            costs.synchronize(dev)
            train_time += time.perf_counter() - t0
            flops += seen * flops_per_sample
            train_loss = float(loss_sum) / max(1, seen)
            if status == "finished" and not math.isfinite(train_loss):
                status, error = "diverged", f"loss became {train_loss} in epoch {epoch + 1}"
            if status == "diverged":
                break
            row = {"epoch": epoch + 1, "train_loss": train_loss, "lr": current_lr(optimizer),
                   "train_time_s": train_time, "train_flops": flops}
            if epoch + 1 < policy.epochs:
                row.update(evaluate(mf, model, val_ds, dev, max(256, policy.batch_size), ctx, label_smoothing=ls))
                if epoch_costs:
                    row.update(_current_costs(mf, model, val_ds, dev, epoch_costs))
                history.append(row)
                if report:
                    report(dict(row))
            else:
                history.append(row)
    if status == "diverged":
        metrics = {"train_time_s": train_time, "train_flops": flops, mf.quality_metric: math.nan}
        result = RunResult("diverged", metrics, history, error)
        if report:
            report({"epoch": len(history) + 1, **metrics, "diverged": 1.0, "error": error})
        return result
    if pruner is not None:
        pruner.make_permanent()
    final = _measure_deployed(mf, policy, model, val_ds, dev)
    final.update(train_time_s=train_time, train_flops=flops, peak_mem_mb=memory.peak_mb)
    if energy.joules is not None:
        final["energy_j"] = energy.joules
    history[-1].update(final)
    if report:
        report(dict(history[-1]))
    return RunResult("finished", {k: v for k, v in history[-1].items() if k != "lr"}, history, None, model)


def _optimizer_step(policy: Policy, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                    scaler: torch.amp.GradScaler | None) -> None:
    if policy.grad_clip is not None:
        if scaler is not None:
            scaler.unscale_(optimizer)  # clip the true gradients, not the scaled ones
        torch.nn.utils.clip_grad_norm_(model.parameters(), policy.grad_clip)
    if scaler is not None:
        scaler.step(optimizer)
        scaler.update()
    else:
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def _measure_deployed(mf: ModelFile, policy: Policy, model: torch.nn.Module, val_ds: Dataset,
                      dev: torch.device) -> dict[str, float]:
    """Quality and serving costs of the artefact that ships (pruned, at its deployed precision)."""
    model.eval()
    params, nonzero = costs.param_counts(model)
    sample_x, _ = _first(val_ds, 1)
    infer_flops = costs.forward_flops(model, _to(sample_x, dev))
    deployed = prec.deploy(model, policy.precision)
    ddev = next((p.device for p in deployed.parameters()), torch.device("cpu"))
    dtype = prec.input_dtype(policy.precision)
    quality = evaluate(mf, deployed, val_ds, ddev, 256, _nullctx, dtype)
    x1 = _to(sample_x, ddev, dtype)
    xb = _serving_batch(val_ds, mf.serve_batch, ddev, dtype)
    return {
        **quality,
        "params": float(params),
        "nonzero_params": float(nonzero),
        "model_size_mb": costs.model_size_mb(deployed),
        "infer_flops": float(infer_flops),
        "infer_latency_ms": costs.latency_ms(deployed, x1, ddev),
        "infer_latency_batch_ms": costs.latency_ms(deployed, xb, ddev, repeats=15),
    }


def _current_costs(mf: ModelFile, model: torch.nn.Module, val_ds: Dataset, dev: torch.device,
                   names: set[str]) -> dict[str, float]:
    """Serving costs of the model as it is now (before pruning is made permanent or int8 applied)."""
    out: dict[str, float] = {}
    if names & {"params", "nonzero_params"}:
        params, nonzero = costs.param_counts(model)
        out.update(params=float(params), nonzero_params=float(nonzero))
    x1, _ = _first(val_ds, 1)
    if "model_size_mb" in names:
        out["model_size_mb"] = costs.model_size_mb(model)
    if "infer_flops" in names:
        out["infer_flops"] = float(costs.forward_flops(model, _to(x1, dev)))
    if "infer_latency_ms" in names:
        out["infer_latency_ms"] = costs.latency_ms(model, _to(x1, dev), dev, budget_s=0.2)
    if "infer_latency_batch_ms" in names:
        xb = _serving_batch(val_ds, mf.serve_batch, dev, None)
        out["infer_latency_batch_ms"] = costs.latency_ms(model, xb, dev, repeats=10, budget_s=0.3)
    model.train()
    return out


def _serving_batch(ds: Dataset, n: int, dev: torch.device, dtype: torch.dtype | None) -> Any:
    x, _ = _first(ds, n)
    if len(x) < n:  # a small validation set is tiled up to the serving batch size
        x = x.repeat(math.ceil(n / len(x)), *([1] * (x.dim() - 1)))[:n]
    return _to(x, dev, dtype)


class _nullctx:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None
