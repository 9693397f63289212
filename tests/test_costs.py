"""The cost meters of DESIGN §4 on models whose true costs are known."""

from __future__ import annotations

import math
import time

import pytest
import torch
from torch import nn

from autotune import costs

CPU = torch.device("cpu")


def test_forward_flops_of_linear() -> None:
    b, n_in, n_out = 8, 32, 16
    flops = costs.forward_flops(nn.Linear(n_in, n_out), torch.randn(b, n_in))
    assert flops == 2 * n_in * n_out * b


def test_train_step_flops_exact() -> None:
    """Backward costs 2× forward for a layer that needs input gradients, 1× for the first layer.

    The first layer's input is data (no grad), so torch counts only its weight gradient.
    """
    b, n_in, hid, n_out = 8, 32, 64, 16
    x, y = torch.randn(b, n_in), torch.randn(b, n_out)
    single = nn.Linear(n_in, n_out)
    fwd = 2 * n_in * n_out * b
    assert costs.train_step_flops(single, nn.functional.mse_loss, x, y) == 2 * fwd
    mlp = nn.Sequential(nn.Linear(n_in, hid), nn.ReLU(), nn.Linear(hid, n_out))
    f1, f2 = 2 * n_in * hid * b, 2 * hid * n_out * b
    assert costs.forward_flops(mlp, x) == f1 + f2
    assert costs.train_step_flops(mlp, nn.functional.mse_loss, x, y) == 2 * f1 + 3 * f2
    # with input gradients too, a training step is exactly 3× the forward pass
    xg = x.clone().requires_grad_(True)
    assert costs.train_step_flops(mlp, nn.functional.mse_loss, xg, y) == 3 * (f1 + f2)
    assert all(p.grad is None for p in mlp.parameters())  # the count leaves no gradients


def test_latency_is_a_positive_median() -> None:
    ms = costs.latency_ms(nn.Linear(64, 64), torch.randn(4, 64), CPU, repeats=10, budget_s=0.2)
    assert 0 < ms < 1000 and math.isfinite(ms)


def test_param_counts() -> None:
    layer = nn.Linear(10, 5)  # 50 weights + 5 biases
    with torch.no_grad():
        layer.weight[0].zero_()
    assert costs.param_counts(layer) == (55, 45)


def test_model_size_of_fp32_linear() -> None:
    layer = nn.Linear(256, 256)
    n = 256 * 256 + 256
    size = costs.model_size_mb(layer)
    assert 4 * n / 1e6 <= size <= 4 * n / 1e6 + 0.01  # 4 bytes a parameter + a few kB of pickle
    assert costs.model_size_mb(layer.to(torch.bfloat16)) == pytest.approx(size / 2, rel=0.05)


def test_peak_memory_sees_an_allocation() -> None:
    with costs.PeakMemory(CPU) as mem:
        block = torch.ones(50 * 2**20 // 4)  # 50 MiB, touched
        block += 1
        del block
    assert mem.peak_mb >= 30


def test_peak_memory_small_when_idle() -> None:
    with costs.PeakMemory(CPU) as mem:
        pass
    assert 0 <= mem.peak_mb < 30


def test_energy_is_none_or_non_negative() -> None:
    with costs.EnergyMeter(CPU) as meter:
        torch.randn(256, 256) @ torch.randn(256, 256)
    assert meter.joules is None or (isinstance(meter.joules, float) and meter.joules >= 0)


def test_cost_names_are_unique() -> None:
    assert len(set(costs.COST_METRICS)) == len(costs.COST_METRICS)
    assert set(costs.GROWING_COSTS) <= set(costs.COST_METRICS)


def test_peak_memory_sampler_fallback(monkeypatch: pytest.MonkeyPatch) -> None:
    """Where the kernel keeps no resettable high-water mark, a sampling thread measures it."""
    monkeypatch.setattr(costs, "_reset_kernel_peak_rss", lambda: False)
    with costs.PeakMemory(CPU, interval_s=0.001) as mem:
        block = torch.ones(50 * 2**20 // 4)
        block += 1
        time.sleep(0.02)
        del block
    assert not mem._kernel
    assert mem.peak_mb >= 30
