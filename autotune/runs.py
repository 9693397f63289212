"""Single runs outside a study: the model's default policy and one checked training run."""

from __future__ import annotations

from autotune.contract import ModelFile
from autotune.policy import Policy
from autotune.trainer import RunResult, train


def default_policy(mf: ModelFile) -> Policy:
    """autotune's defaults with the model's own DEFAULT_POLICY overrides: the study's baseline."""
    return Policy().with_overrides(mf.default_policy, source=f"{mf.path} DEFAULT_POLICY")


def train_once(mf: ModelFile, policy: Policy, *, device: str | None = None,
               threads: int | None = None) -> RunResult:
    return train(mf, policy, device=device, threads=threads)
