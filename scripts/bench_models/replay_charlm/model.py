"""Replay model for the search benchmark: looks each policy up in scripts/tables/charlm.json.gz and reports
its recorded per-epoch quality and costs (no training; compute is counted in epochs)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # scripts/, for benchlib
from benchlib import Replay  # noqa: E402

_replay = Replay("charlm")
OBJECTIVE = _replay.objective
SEARCH_SPACE = "../../tables/charlm_space.yaml"
DEFAULT_POLICY = _replay.default_policy
train = _replay.train
