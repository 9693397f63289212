"""Single runs outside a study: what a run produced, the model's default policy and one checked run."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from autotune.contract import ModelFile
from autotune.policy import Policy

if TYPE_CHECKING:
    import torch

Reporter = Callable[[dict[str, Any]], None]


@dataclass
class RunResult:
    """What one run produced: its status, final metrics (quality + every cost) and per-epoch history."""

    status: str  # "finished" | "diverged"
    metrics: dict[str, float]
    history: list[dict[str, float]] = field(default_factory=list)
    error: str | None = None
    model: torch.nn.Module | None = None


def default_policy(mf: ModelFile) -> Policy:
    """autotune's defaults with the model's own DEFAULT_POLICY overrides: the study's baseline."""
    return Policy().with_overrides(mf.default_policy, source=f"{mf.path} DEFAULT_POLICY")


def train_once(mf: ModelFile, policy: Policy, *, device: str | None = None,
               threads: int | None = None) -> RunResult:
    from autotune.trainer import train

    return train(mf, policy, device=device, threads=threads)
