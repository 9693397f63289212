"""No-op model for the overhead benchmark: a custom train loop that reports cheap synthetic metrics.

quality rises with epochs and peaks at lr = 3e-3; cost grows with epochs and falls with batch size.
No torch work at all, so what a study costs beyond it is autotune's (and Ray's, Optuna's) own.
"""

from __future__ import annotations

import math
from typing import Any

OBJECTIVE = ("accuracy", "max")
SEARCH_SPACE = "space.yaml"
DEFAULT_POLICY: dict[str, Any] = {"epochs": 3}


def metrics_at(lr: float, batch_size: int, weight_decay: float, epoch: int) -> dict[str, float]:
    quality = math.exp(-(math.log10(lr) + 2.5) ** 2) * (1 - 0.5 ** epoch) - weight_decay
    return {"accuracy": quality, "train_time_s": epoch * 64.0 / batch_size}


def train(policy: Any, report: Any) -> None:
    for epoch in range(1, policy.epochs + 1):
        report(epoch=epoch, **metrics_at(policy.optimizer.lr, policy.batch_size,
                                         policy.optimizer.weight_decay, epoch))
