"""Optimizers and learning-rate schedules built from a Policy with torch.optim's own classes."""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import TYPE_CHECKING

import torch
from torch.optim import lr_scheduler

if TYPE_CHECKING:
    from autotune.policy import Policy


def make_optimizer(policy: Policy, params: Iterable[torch.nn.Parameter]) -> torch.optim.Optimizer:
    """The torch optimizer the policy names, with its settings (None means torch's own default)."""
    o = policy.optimizer
    params = [p for p in params if p.requires_grad]
    common = {"lr": o.lr, "weight_decay": o.weight_decay}
    if o.name == "sgd":
        momentum = 0.9 if o.momentum is None else o.momentum
        return torch.optim.SGD(params, momentum=momentum, nesterov=bool(o.nesterov), **common)
    if o.name in ("adam", "adamw"):
        cls = torch.optim.Adam if o.name == "adam" else torch.optim.AdamW
        betas = o.betas or (0.9, 0.999)
        return cls(params, betas=betas, **common)
    if o.name == "rmsprop":
        return torch.optim.RMSprop(params, momentum=o.momentum or 0.0, **common)
    if o.name == "adagrad":
        return torch.optim.Adagrad(params, **common)
    raise AssertionError(f"unhandled optimizer {o.name}")  # the Policy validated the name


def make_scheduler(
    policy: Policy, optimizer: torch.optim.Optimizer, steps_per_epoch: int
) -> lr_scheduler.LRScheduler:
    """The LR schedule, stepped once per optimizer step, with linear warm-up chained in front."""
    s = policy.schedule
    total = max(1, policy.epochs * steps_per_epoch)
    warmup = min(total - 1, round(s.warmup_epochs * steps_per_epoch))
    main_steps = max(1, total - warmup)
    if s.name == "constant":
        main: lr_scheduler.LRScheduler = lr_scheduler.ConstantLR(optimizer, factor=1.0, total_iters=0)
    elif s.name == "step":
        step_epochs = s.step_size or max(1, policy.epochs // 3)
        main = lr_scheduler.StepLR(
            optimizer, step_size=step_epochs * steps_per_epoch, gamma=s.gamma or 0.1
        )
    elif s.name == "cosine":
        eta_min = policy.optimizer.lr * (s.min_lr_ratio or 0.0)
        main = lr_scheduler.CosineAnnealingLR(optimizer, T_max=main_steps, eta_min=eta_min)
    elif s.name == "onecycle":
        main = lr_scheduler.OneCycleLR(
            optimizer,
            max_lr=policy.optimizer.lr,
            total_steps=main_steps + 1,  # OneCycleLR raises if stepped past total_steps
            pct_start=s.pct_start or 0.3,
        )
    else:  # pragma: no cover - validated by Policy
        raise AssertionError(f"unhandled schedule {s.name}")
    if warmup <= 0:
        return main
    warm = lr_scheduler.LinearLR(optimizer, start_factor=1e-3, end_factor=1.0, total_iters=warmup)
    return lr_scheduler.SequentialLR(optimizer, [warm, main], milestones=[warmup])


def rebuild_after_surgery(
    policy: Policy,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: lr_scheduler.LRScheduler,
    steps_per_epoch: int,
) -> tuple[torch.optim.Optimizer, lr_scheduler.LRScheduler]:
    """New optimizer + scheduler after structured pruning changed parameter shapes.

    Per-parameter state (momentum, Adam moments) belongs to the removed shapes and is dropped;
    the schedule continues exactly where it was.
    """
    new_opt = make_optimizer(policy, model.parameters())
    sched_state = scheduler.state_dict()
    lrs = [g["lr"] for g in optimizer.param_groups]
    new_sched = make_scheduler(policy, new_opt, steps_per_epoch)
    new_sched.load_state_dict(sched_state)
    for group, old_group, lr in zip(new_opt.param_groups, optimizer.param_groups, lrs, strict=True):
        for key, value in old_group.items():
            if key != "params":
                group[key] = value
        group["lr"] = lr
    return new_opt, new_sched


def current_lr(optimizer: torch.optim.Optimizer) -> float:
    lr = optimizer.param_groups[0]["lr"]
    return float(lr) if math.isfinite(lr) else float("nan")
