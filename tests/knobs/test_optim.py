"""Optimizers and LR schedules are torch's own classes, configured as the policy says."""

from __future__ import annotations

import math

import pytest
import torch
from torch.optim import lr_scheduler

from autotune.knobs.optim import current_lr, make_optimizer, make_scheduler, rebuild_after_surgery
from autotune.policy import Policy


def _model() -> torch.nn.Module:
    return torch.nn.Linear(3, 2)


def _policy(**flat: object) -> Policy:
    return Policy.from_flat(flat)


@pytest.mark.parametrize(
    ("flat", "cls", "expected"),
    [
        ({"optimizer.name": "sgd", "optimizer.momentum": 0.8, "optimizer.nesterov": True},
         torch.optim.SGD, {"momentum": 0.8, "nesterov": True}),
        ({"optimizer.name": "sgd"}, torch.optim.SGD, {"momentum": 0.9, "nesterov": False}),
        ({"optimizer.name": "adam", "optimizer.betas": [0.8, 0.95]}, torch.optim.Adam,
         {"betas": (0.8, 0.95)}),
        ({"optimizer.name": "adamw"}, torch.optim.AdamW, {"betas": (0.9, 0.999)}),
        ({"optimizer.name": "rmsprop", "optimizer.momentum": 0.5}, torch.optim.RMSprop,
         {"momentum": 0.5}),
        ({"optimizer.name": "adagrad"}, torch.optim.Adagrad, {}),
    ],
)
def test_optimizer_class_and_settings(flat: dict, cls: type, expected: dict) -> None:
    p = _policy(**flat, **{"optimizer.lr": 0.05, "optimizer.weight_decay": 0.01})
    opt = make_optimizer(p, _model().parameters())
    assert type(opt) is cls
    group = opt.param_groups[0]
    assert group["lr"] == 0.05
    assert group["weight_decay"] == 0.01
    for key, value in expected.items():
        assert group[key] == value, key


def test_frozen_parameters_are_left_out() -> None:
    m = _model()
    m.bias.requires_grad_(False)
    opt = make_optimizer(Policy(), m.parameters())
    assert len(opt.param_groups[0]["params"]) == 1


def _lrs(p: Policy, steps_per_epoch: int) -> tuple[lr_scheduler.LRScheduler, list[float]]:
    opt = make_optimizer(p, _model().parameters())
    sched = make_scheduler(p, opt, steps_per_epoch)
    lrs = [current_lr(opt)]
    for _ in range(p.epochs * steps_per_epoch):
        opt.step()
        sched.step()
        lrs.append(current_lr(opt))
    return sched, lrs


@pytest.mark.parametrize(
    ("name", "cls"),
    [
        ("constant", lr_scheduler.ConstantLR),
        ("step", lr_scheduler.StepLR),
        ("cosine", lr_scheduler.CosineAnnealingLR),
        ("onecycle", lr_scheduler.OneCycleLR),
    ],
)
def test_schedule_classes(name: str, cls: type) -> None:
    p = _policy(**{"schedule.name": name, "epochs": 4})
    opt = make_optimizer(p, _model().parameters())
    assert type(make_scheduler(p, opt, 10)) is cls
    warm = _policy(**{"schedule.name": name, "epochs": 4, "schedule.warmup_epochs": 1})
    opt = make_optimizer(warm, _model().parameters())
    seq = make_scheduler(warm, opt, 10)
    assert type(seq) is lr_scheduler.SequentialLR
    assert type(seq._schedulers[0]) is lr_scheduler.LinearLR
    assert type(seq._schedulers[1]) is cls


def test_constant_curve() -> None:
    _, lrs = _lrs(_policy(**{"schedule.name": "constant", "epochs": 3, "optimizer.lr": 0.1}), 5)
    assert lrs == pytest.approx([0.1] * 16)


def test_cosine_curve_ends_near_eta_min() -> None:
    p = _policy(**{"schedule.name": "cosine", "schedule.min_lr_ratio": 0.1, "epochs": 5,
                   "optimizer.lr": 0.1})
    _, lrs = _lrs(p, 20)
    assert lrs[0] == pytest.approx(0.1)
    assert lrs[-1] == pytest.approx(0.01, abs=1e-6)
    assert lrs[50] == pytest.approx(0.01 + 0.09 * 0.5, rel=1e-3)  # half-way: mean of the two
    assert all(a >= b - 1e-12 for a, b in zip(lrs, lrs[1:], strict=False))


def test_warmup_rises_linearly_then_follows_main() -> None:
    p = _policy(**{"schedule.name": "cosine", "schedule.warmup_epochs": 1, "epochs": 4,
                   "optimizer.lr": 0.1})
    _, lrs = _lrs(p, 10)
    rise = lrs[:11]
    diffs = [b - a for a, b in zip(rise, rise[1:], strict=False)]
    assert lrs[0] == pytest.approx(1e-4)  # start_factor 1e-3
    assert max(diffs) - min(diffs) < 1e-9  # linear
    assert lrs[10] == pytest.approx(0.1)  # peak at the end of warm-up
    assert lrs[-1] == pytest.approx(0.0, abs=1e-6)  # then cosine to zero
    assert all(b <= a + 1e-12 for a, b in zip(lrs[10:], lrs[11:], strict=False))


def test_step_decays_at_step_size_times_steps_per_epoch() -> None:
    p = _policy(**{"schedule.name": "step", "schedule.step_size": 2, "schedule.gamma": 0.5,
                   "epochs": 6, "optimizer.lr": 0.1})
    _, lrs = _lrs(p, 7)
    assert lrs[13] == pytest.approx(0.1)
    assert lrs[14] == pytest.approx(0.05)
    assert lrs[27] == pytest.approx(0.05)
    assert lrs[28] == pytest.approx(0.025)


def test_onecycle_peaks_at_lr() -> None:
    p = _policy(**{"schedule.name": "onecycle", "schedule.pct_start": 0.25, "epochs": 4,
                   "optimizer.lr": 0.2})
    _, lrs = _lrs(p, 10)
    peak = max(lrs)
    assert peak == pytest.approx(0.2, rel=2e-3)  # total_steps = 41: the peak falls between steps
    assert 8 <= lrs.index(peak) <= 12  # at pct_start of the 40 steps
    assert lrs[0] < 0.2 / 10 and lrs[-1] < 0.2 / 100


def test_rebuild_after_surgery_continues_the_schedule() -> None:
    p = _policy(**{"schedule.name": "cosine", "epochs": 2, "optimizer.lr": 0.1})
    model = _model()
    opt = make_optimizer(p, model.parameters())
    sched = make_scheduler(p, opt, 10)
    for _ in range(7):
        opt.step()
        sched.step()
    before = current_lr(opt)
    model.weight = torch.nn.Parameter(model.weight.detach()[:1])  # "pruned" shape
    new_opt, new_sched = rebuild_after_surgery(p, model, opt, sched, 10)
    assert current_lr(new_opt) == pytest.approx(before)
    new_opt.step()
    new_sched.step()
    expected = 0.1 * (1 + math.cos(math.pi * 8 / 20)) / 2
    assert current_lr(new_opt) == pytest.approx(expected, rel=1e-6)
