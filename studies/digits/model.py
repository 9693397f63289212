"""Example study: a small CNN on scikit-learn's bundled 8x8 handwritten digits (no download)."""

from __future__ import annotations

import functools
from typing import Any

import torch
from torch import nn
from torch.utils.data import TensorDataset

OBJECTIVE = ("accuracy", "max")
SEARCH_SPACE = "../../search_spaces/digits.yaml"
DEFAULT_POLICY: dict[str, Any] = {"optimizer.lr": 3e-3, "epochs": 10}
SERVE_BATCH = 64

_SPLIT_SEED = 0
_VAL_FRACTION = 0.2


class DigitsCNN(nn.Module):
    """conv(w) -> conv(2w) -> pool -> conv(4w) -> global average pool -> dropout -> linear(10).

    The classifier sees only 4w features, so structured channel pruning (which leaves the
    classifier's outputs alone) removes most of the parameters and FLOPs.
    """

    def __init__(self, width: int = 16, dropout: float = 0.1, num_classes: int = 10) -> None:
        super().__init__()
        w = int(width)
        self.features = nn.Sequential(
            nn.Conv2d(1, w, 3, padding=1, bias=False),
            nn.BatchNorm2d(w),
            nn.ReLU(inplace=True),
            nn.Conv2d(w, 2 * w, 3, padding=1, bias=False),
            nn.BatchNorm2d(2 * w),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),  # 8x8 -> 4x4
            nn.Conv2d(2 * w, 4 * w, 3, padding=1, bias=False),
            nn.BatchNorm2d(4 * w),
            nn.ReLU(inplace=True),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        )
        self.dropout = nn.Dropout(float(dropout))
        self.classifier = nn.Linear(4 * w, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.dropout(self.features(x)))


def build_model(hp: dict[str, Any]) -> nn.Module:
    """hp keys: width (int, base conv channels, default 16), dropout (float, default 0.1)."""
    return DigitsCNN(width=int(hp.get("width", 16)), dropout=float(hp.get("dropout", 0.1)))


@functools.lru_cache(maxsize=1)
def datasets() -> tuple[TensorDataset, TensorDataset]:
    """(train, validation): fixed stratified 80/20 split, pixels in [0, 1], shape (N, 1, 8, 8)."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    x = torch.tensor(digits.data, dtype=torch.float32).reshape(-1, 1, 8, 8) / 16.0
    y = torch.tensor(digits.target, dtype=torch.long)
    idx_train, idx_val = train_test_split(
        list(range(len(y))),
        test_size=_VAL_FRACTION,
        random_state=_SPLIT_SEED,
        stratify=digits.target,
    )
    it, iv = torch.tensor(idx_train), torch.tensor(idx_val)
    return TensorDataset(x[it], y[it]), TensorDataset(x[iv], y[iv])


def metrics(outputs: torch.Tensor, targets: torch.Tensor) -> dict[str, float]:
    """Validation accuracy (the objective) and mean cross-entropy."""
    acc = (outputs.argmax(dim=1) == targets).float().mean().item()
    ce = nn.functional.cross_entropy(outputs.float(), targets).item()
    return {"accuracy": acc, "cross_entropy": ce}
