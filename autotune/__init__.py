"""autotune: tune the hyperparameters and efficiency policy of a PyTorch model (Ray Tune + Optuna + MLflow)."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from autotune.errors import AutotuneError, ContractError, PolicyError, SpaceError, StudyError

if TYPE_CHECKING:
    from autotune.contract import ModelFile, load_model_file
    from autotune.policy import Policy, load_policy
    from autotune.runner import SearchOptions, run_search
    from autotune.runs import RunResult
    from autotune.space import SearchSpace
    from autotune.trainer import train

# The public names are imported on first use (PEP 562): a Ray worker imports autotune.trainable,
# and with it this package, before each study's first trial; eager imports pulled in torch, Ray
# Tune and Optuna there whether the trial needed them or not.
_LAZY = {
    "ModelFile": "autotune.contract", "load_model_file": "autotune.contract",
    "Policy": "autotune.policy", "load_policy": "autotune.policy",
    "SearchOptions": "autotune.runner", "run_search": "autotune.runner",
    "RunResult": "autotune.runs", "SearchSpace": "autotune.space", "train": "autotune.trainer",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'autotune' has no attribute {name!r}")


__all__ = [
    "AutotuneError",
    "ContractError",
    "ModelFile",
    "Policy",
    "PolicyError",
    "RunResult",
    "SearchOptions",
    "SearchSpace",
    "SpaceError",
    "StudyError",
    "load_model_file",
    "load_policy",
    "run_search",
    "train",
]
__version__ = "0.1.0"
