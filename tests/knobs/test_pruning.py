"""Pruning: magnitude sparsity, the gradual plan, structured channel removal, and its refusal."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import pytest
import torch
from torch import nn

from autotune import costs
from autotune.errors import PolicyError
from autotune.knobs.pruning import Pruner, prune_plan
from autotune.policy import Policy

STUDIES = Path(__file__).resolve().parents[2] / "studies"


def _study(name: str) -> ModuleType:
    path = STUDIES / name / "model.py"
    spec = importlib.util.spec_from_file_location(f"_test_{name}_model", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _policy(**flat: object) -> Policy:
    return Policy.from_flat(flat)


def _mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(),
                         nn.Linear(32, 4))


def _prunable_weights(model: nn.Module) -> list[torch.Tensor]:
    return [m.weight for m in model.modules() if isinstance(m, nn.Linear | nn.Conv2d)]


def test_magnitude_halves_nonzero_weights() -> None:
    model = _mlp()
    x = torch.randn(2, 16)
    before = sum(int(torch.count_nonzero(w)) for w in _prunable_weights(model))
    pruner = Pruner(_policy(**{"prune.method": "magnitude", "prune.ratio": 0.5}), model, x)
    pruner.prune_to(0.5)
    assert pruner.sparsity() == pytest.approx(0.5, abs=1e-3)
    pruner.make_permanent()
    after = sum(int(torch.count_nonzero(w)) for w in _prunable_weights(model))
    assert after == pytest.approx(before / 2, abs=1)
    names = [n for n, _ in model.named_parameters()]
    assert not any(n.endswith("_orig") for n in names)
    assert not any(hasattr(m, "weight_mask") for m in model.modules())
    assert model(x).shape == (2, 4)


def test_magnitude_gradual_steps_accumulate() -> None:
    model = _mlp()
    pruner = Pruner(_policy(**{"prune.method": "magnitude", "prune.ratio": 0.8,
                               "prune.schedule": "gradual"}), model, torch.randn(2, 16))
    for ratio in (0.2, 0.5, 0.8):
        pruner.prune_to(ratio)
        assert pruner.sparsity() == pytest.approx(ratio, abs=2e-3)
    pruner.prune_to(0.5)  # never un-prunes
    assert pruner.sparsity() == pytest.approx(0.8, abs=2e-3)


def test_magnitude_refuses_a_model_without_weights() -> None:
    with pytest.raises(PolicyError, match="found no"):
        Pruner(_policy(**{"prune.method": "magnitude", "prune.ratio": 0.5}), nn.ReLU(),
               torch.randn(2, 3))


def test_oneshot_plan() -> None:
    assert prune_plan(_policy(**{"epochs": 10, "prune.method": "magnitude",
                                 "prune.ratio": 0.5})) == {2: 0.5}  # default: after a quarter
    assert prune_plan(_policy(**{"epochs": 10, "prune.method": "magnitude", "prune.ratio": 0.5,
                                 "prune.at_epoch": 6})) == {6: 0.5}
    assert prune_plan(Policy()) == {}


def test_gradual_plan_is_monotone_cubic_and_ends_at_ratio() -> None:
    p = _policy(**{"epochs": 12, "prune.method": "magnitude", "prune.ratio": 0.8,
                   "prune.schedule": "gradual", "prune.start_epoch": 2, "prune.end_epoch": 10})
    plan = prune_plan(p)
    epochs = sorted(plan)
    assert epochs == list(range(2, 10))
    ratios = [plan[e] for e in epochs]
    assert all(b > a for a, b in zip(ratios, ratios[1:], strict=False))
    assert ratios[-1] == pytest.approx(0.8)
    for i, r in enumerate(ratios):  # Zhu & Gupta: s·(1 − (1 − t)³)
        assert r == pytest.approx(0.8 * (1 - (1 - (i + 1) / 8) ** 3), abs=1e-6)
    steps = [b - a for a, b in zip([0.0, *ratios], ratios, strict=False)]
    assert all(b < a for a, b in zip(steps, steps[1:], strict=False))  # fast first, slow last


def test_structured_on_digits_cnn_cuts_params_and_flops() -> None:
    digits = _study("digits")
    torch.manual_seed(0)
    model = digits.build_model({})
    x = torch.randn(4, 1, 8, 8)
    params_before = sum(p.numel() for p in model.parameters())
    flops_before = costs.forward_flops(model, x)
    pruner = Pruner(_policy(**{"prune.method": "structured", "prune.ratio": 0.5}), model, x[:2])
    assert pruner.changes_shapes
    pruner.prune_to(0.5)
    pruner.make_permanent()
    params_after = sum(p.numel() for p in model.parameters())
    flops_after = costs.forward_flops(model, x)
    assert params_after <= 0.6 * params_before
    assert flops_after <= 0.6 * flops_before
    assert model(x).shape == (4, 10)
    assert model.classifier.out_features == 10


class TinyGRU(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embedding = nn.Embedding(20, 8)
        self.rnn = nn.GRU(8, 16, batch_first=True)
        self.head = nn.Linear(16, 20)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, _ = self.rnn(self.embedding(x))
        return self.head(h)


def test_structured_refuses_a_model_it_cannot_prune() -> None:
    model = TinyGRU()
    before = [p.detach().clone() for p in model.parameters()]
    with pytest.raises(PolicyError, match="removes nothing from this model") as info:
        Pruner(_policy(**{"prune.method": "structured", "prune.ratio": 0.5}), model,
               torch.zeros(2, 5, dtype=torch.long))
    assert "magnitude" in (info.value.fix or "")
    assert "rnn.weight" in str(info.value)  # names what torch-pruning could not handle
    # the probe ran on a copy: the user's model is untouched
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))


def test_policy_prune_now_helper() -> None:
    model = _mlp()
    policy = _policy(**{"prune.method": "magnitude", "prune.ratio": 0.3})
    policy.prune_now(model, torch.randn(2, 16))
    w = _prunable_weights(model)
    zeros = sum(int((t == 0).sum()) for t in w)
    assert zeros / sum(t.numel() for t in w) == pytest.approx(0.3, abs=1e-3)
