"""Shared fixtures: an isolated studies home per test and quiet Ray."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# Before any test imports ray: no usage stats, no new-style console output (ECOSYSTEM_NOTES).
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")

REPO = Path(__file__).resolve().parents[1]
STUDIES = REPO / "studies"
# The smallest model.py that meets the contract; tests break copies of it one piece at a time.
TINY_MODEL = """
import torch
from torch import nn

def build_model(hp):
    return nn.Linear(4, 3)

def datasets():
    x = torch.randn(20, 4)
    y = torch.randint(0, 3, (20,))
    return (x, y), (x[:5], y[:5])
"""


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh AUTOTUNE_HOME and working directory, so tests never share a study or MLflow store."""
    h = tmp_path / "home"
    monkeypatch.setenv("AUTOTUNE_HOME", str(h))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)
    return h
