"""A cheaper char-LM for the tabulated benchmark: studies/charlm's GRU on 15 % of its training text.

Same model, loss, metrics and validation text as studies/charlm/model.py; the training set keeps the
first TRAIN_FRACTION of its windows and the default budget is 8 epochs of that, so one policy trains in
seconds on one CPU thread instead of ~16 s.
"""

from __future__ import annotations

import functools
import importlib.util
from pathlib import Path
from typing import Any

from torch.utils.data import TensorDataset

_SRC = Path(__file__).resolve().parents[3] / "studies" / "charlm" / "model.py"
_spec = importlib.util.spec_from_file_location("autotune_bench_charlm_base", _SRC)
_base = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_base)

OBJECTIVE = ("perplexity", "min")
SEARCH_SPACE = "../charlm_space.yaml"
DEFAULT_POLICY: dict[str, Any] = {"optimizer.lr": 3e-3, "epochs": 8, "grad_clip": 1.0,
                                  "model.hidden": 64}
SERVE_BATCH = 32
TRAIN_FRACTION = 0.15

build_model = _base.build_model
loss_fn = _base.loss_fn
metrics = _base.metrics


@functools.lru_cache(maxsize=1)
def datasets() -> tuple[TensorDataset, TensorDataset]:
    train, val = _base.datasets()
    n = int(len(train) * TRAIN_FRACTION)
    return TensorDataset(*(t[:n] for t in train.tensors)), val
