"""Example study: a character-level GRU language model on CPython standard-library sources."""

from __future__ import annotations

import functools
import math
import os
import string
from typing import Any

import torch
from torch import nn
from torch.utils.data import TensorDataset

OBJECTIVE = ("perplexity", "min")
SEARCH_SPACE = "../../search_spaces/charlm.yaml"
DEFAULT_POLICY: dict[str, Any] = {"optimizer.lr": 3e-3, "epochs": 8, "grad_clip": 1.0}
SERVE_BATCH = 32

# Files present in every CPython 3.11+ standard library; sorted so the corpus order is fixed.
SOURCE_FILES: tuple[str, ...] = tuple(
    sorted(
        (
            "argparse.py",
            "contextlib.py",
            "copy.py",
            "functools.py",
            "random.py",
            "string.py",
            "textwrap.py",
        )
    )
)
SEQ_LEN = 64
VAL_FRACTION = 0.1  # the last 10 % of every file is validation text (no overlap with training)

# Fixed vocabulary: string.printable (100 characters, a fixed order), then one unknown id.
VOCAB: str = string.printable
UNK_ID = len(VOCAB)
VOCAB_SIZE = len(VOCAB) + 1
_CHAR_TO_ID = {c: i for i, c in enumerate(VOCAB)}


def encode(text: str) -> torch.Tensor:
    """Character ids of `text`; characters outside printable ASCII map to UNK_ID."""
    return torch.tensor([_CHAR_TO_ID.get(c, UNK_ID) for c in text], dtype=torch.long)


def decode(ids: torch.Tensor) -> str:
    return "".join(VOCAB[i] if i < len(VOCAB) else "\ufffd" for i in ids.tolist())


class CharGRU(nn.Module):
    """Embedding -> GRU -> linear over the vocabulary; outputs (N, T, V) logits."""

    def __init__(
        self, hidden: int = 128, embed: int = 32, layers: int = 1, dropout: float = 0.0
    ) -> None:
        super().__init__()
        self.embedding = nn.Embedding(VOCAB_SIZE, int(embed))
        self.rnn = nn.GRU(
            int(embed),
            int(hidden),
            num_layers=int(layers),
            batch_first=True,
            dropout=float(dropout) if int(layers) > 1 else 0.0,
        )
        self.dropout = nn.Dropout(float(dropout))
        self.head = nn.Linear(int(hidden), VOCAB_SIZE)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, _ = self.rnn(self.embedding(x))
        return self.head(self.dropout(h))


def build_model(hp: dict[str, Any]) -> nn.Module:
    """hp keys: hidden (int, 128), embed (int, 32), layers (int, 1), dropout (float, 0.0)."""
    return CharGRU(
        hidden=int(hp.get("hidden", 128)),
        embed=int(hp.get("embed", 32)),
        layers=int(hp.get("layers", 1)),
        dropout=float(hp.get("dropout", 0.0)),
    )


def _chunks(ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Non-overlapping (input, next-character target) windows of SEQ_LEN."""
    n = (len(ids) - 1) // SEQ_LEN
    x = ids[: n * SEQ_LEN].reshape(n, SEQ_LEN)
    y = ids[1 : n * SEQ_LEN + 1].reshape(n, SEQ_LEN)
    return x, y


@functools.lru_cache(maxsize=1)
def datasets() -> tuple[TensorDataset, TensorDataset]:
    """(train, validation) of (N, SEQ_LEN) input ids and next-character targets."""
    stdlib = os.path.dirname(os.__file__)
    parts: dict[str, list[torch.Tensor]] = {"train": [], "val": []}
    for name in SOURCE_FILES:
        with open(os.path.join(stdlib, name), encoding="utf-8") as fh:
            ids = encode(fh.read())
        cut = int(len(ids) * (1 - VAL_FRACTION))
        for split, seg in (("train", ids[:cut]), ("val", ids[cut:])):
            x, y = _chunks(seg)
            parts[split].append(torch.stack((x, y)))
    train = torch.cat(parts["train"], dim=1)
    val = torch.cat(parts["val"], dim=1)
    return TensorDataset(train[0], train[1]), TensorDataset(val[0], val[1])


def loss_fn(
    outputs: torch.Tensor, targets: torch.Tensor, label_smoothing: float = 0.0
) -> torch.Tensor:
    """Next-character cross-entropy over every position."""
    return nn.functional.cross_entropy(
        outputs.reshape(-1, outputs.shape[-1]).float(),
        targets.reshape(-1),
        label_smoothing=label_smoothing,
    )


def metrics(outputs: torch.Tensor, targets: torch.Tensor) -> dict[str, float]:
    """Perplexity (the objective) and bits per character from the mean validation cross-entropy."""
    ce = loss_fn(outputs, targets).item()
    return {"perplexity": math.exp(ce), "bits_per_char": ce / math.log(2)}
