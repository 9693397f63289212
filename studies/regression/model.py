"""Example study: an MLP regressing scikit-learn's bundled diabetes data (no download)."""

from __future__ import annotations

import functools
from typing import Any

import torch
from torch import nn
from torch.utils.data import TensorDataset

OBJECTIVE = ("mse", "min")
SEARCH_SPACE = "../../search_spaces/regression.yaml"
DEFAULT_POLICY: dict[str, Any] = {
    "optimizer.lr": 1e-3,
    "optimizer.weight_decay": 1e-2,
    "batch_size": 32,
    "epochs": 30,
}
SERVE_BATCH = 64

N_FEATURES = 10
_SPLIT_SEED = 0
_VAL_FRACTION = 0.2


def build_model(hp: dict[str, Any]) -> nn.Module:
    """hp keys: hidden (int, 64), depth (int, number of hidden layers, 2), dropout (float, 0.1)."""
    hidden = int(hp.get("hidden", 64))
    depth = int(hp.get("depth", 2))
    dropout = float(hp.get("dropout", 0.1))
    layers: list[nn.Module] = []
    width_in = N_FEATURES
    for _ in range(depth):
        layers += [nn.Linear(width_in, hidden), nn.ReLU(), nn.Dropout(dropout)]
        width_in = hidden
    layers.append(nn.Linear(width_in, 1))
    return nn.Sequential(*layers)


@functools.lru_cache(maxsize=1)
def datasets() -> tuple[TensorDataset, TensorDataset]:
    """(train, validation): fixed 80/20 split; X and y standardised with training statistics.

    Targets have shape (N, 1) like the model's outputs; metrics are in standardised units.
    """
    from sklearn.datasets import load_diabetes
    from sklearn.model_selection import train_test_split

    x_all, y_all = load_diabetes(return_X_y=True)
    x_tr, x_va, y_tr, y_va = train_test_split(
        x_all, y_all, test_size=_VAL_FRACTION, random_state=_SPLIT_SEED
    )
    x_mean, x_std = x_tr.mean(axis=0), x_tr.std(axis=0)
    y_mean, y_std = y_tr.mean(), y_tr.std()

    def tensors(x: Any, y: Any) -> tuple[torch.Tensor, torch.Tensor]:
        xt = torch.tensor((x - x_mean) / x_std, dtype=torch.float32)
        yt = torch.tensor((y - y_mean) / y_std, dtype=torch.float32).reshape(-1, 1)
        return xt, yt

    return TensorDataset(*tensors(x_tr, y_tr)), TensorDataset(*tensors(x_va, y_va))


def loss_fn(
    outputs: torch.Tensor, targets: torch.Tensor, label_smoothing: float = 0.0
) -> torch.Tensor:
    """Mean squared error; `label_smoothing` is accepted for the trainer and ignored."""
    del label_smoothing
    return nn.functional.mse_loss(outputs.float(), targets.float())


def metrics(outputs: torch.Tensor, targets: torch.Tensor) -> dict[str, float]:
    """Validation MSE (the objective), MAE and R^2, in standardised target units."""
    out, tgt = outputs.float().reshape(-1), targets.float().reshape(-1)
    mse = torch.mean((out - tgt) ** 2).item()
    mae = torch.mean((out - tgt).abs()).item()
    r2 = 1.0 - mse / torch.var(tgt, unbiased=False).item()
    return {"mse": mse, "mae": mae, "r2": r2}
