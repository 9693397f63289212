"""autotune: tune the hyperparameters and efficiency policy of a PyTorch model (Ray Tune + Optuna + MLflow)."""

from autotune.contract import ModelFile, load_model_file
from autotune.errors import AutotuneError, ContractError, PolicyError, SpaceError, StudyError
from autotune.policy import Policy, load_policy
from autotune.runner import SearchOptions, run_search
from autotune.space import SearchSpace
from autotune.trainer import RunResult, train

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
