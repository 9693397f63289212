"""`autotune train` refuses bad input with exit code 2, one paragraph and no traceback."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from autotune.cli import app
from tests.conftest import TINY_MODEL

DIGITS = Path(__file__).resolve().parents[1] / "studies" / "digits" / "model.py"

TINY = TINY_MODEL


def _run(*args: str) -> tuple[int, str, BaseException | None]:
    result = CliRunner().invoke(app, ["train", *args])
    return result.exit_code, result.output, result.exception


def _write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def _assert_refused(args: list[str], *fragments: str) -> None:
    code, output, exc = _run(*args)
    assert code == 2, output
    assert isinstance(exc, SystemExit), exc  # a clean typer.Exit, not a crash
    assert "Traceback" not in output
    assert "error:" in output
    assert "Fix:" in output
    flat = " ".join(output.split())
    for fragment in fragments:
        assert fragment in flat, f"{fragment!r} not in {output!r}"


def test_missing_model_file(tmp_path: Path) -> None:
    _assert_refused([str(tmp_path / "nope.py")], "does not exist", "nope.py")


def test_syntax_error(tmp_path: Path) -> None:
    path = _write(tmp_path, "model.py", "import torch\n\ndef build_model(hp)\n    pass\n")
    _assert_refused([str(path)], "syntax error at line 3", str(path))


def test_missing_build_model(tmp_path: Path) -> None:
    path = _write(tmp_path, "model.py", "def datasets():\n    return [], []\n")
    _assert_refused([str(path)], "no `build_model` function", str(path))


def test_datasets_returning_the_wrong_thing(tmp_path: Path) -> None:
    path = _write(tmp_path, "model.py", TINY + "\ndef datasets():\n    return [1, 2, 3]\n")
    _assert_refused([str(path)], "datasets() returned a list of 3 items", "must return a pair")


def test_unknown_knob(tmp_path: Path) -> None:
    path = _write(tmp_path, "model.py", TINY)
    _assert_refused([str(path), "--set", "optimizer.lrr=0.1"], "unknown key 'optimizer.lrr'")


def test_ratio_out_of_range(tmp_path: Path) -> None:
    path = _write(tmp_path, "model.py", TINY)
    _assert_refused([str(path), "--set", "prune.method=magnitude", "--set", "prune.ratio=2"],
                    "prune.ratio")


def test_set_without_equals(tmp_path: Path) -> None:
    path = _write(tmp_path, "model.py", TINY)
    _assert_refused([str(path), "--set", "epochs"], "not of the form KEY=VALUE")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only refusal")
def test_fp16_without_cuda(tmp_path: Path) -> None:
    path = _write(tmp_path, "model.py", TINY)
    _assert_refused([str(path), "--set", "precision=fp16", "--device", "cpu"],
                    "precision='fp16' needs a CUDA GPU")


def test_policy_missing_file(tmp_path: Path) -> None:
    path = _write(tmp_path, "model.py", TINY)
    _assert_refused([str(path), "--policy", str(tmp_path / "p.yaml")], "does not exist")


def test_policy_invalid_yaml(tmp_path: Path) -> None:
    path = _write(tmp_path, "model.py", TINY)
    policy = _write(tmp_path, "p.yaml", "optimizer: {name: sgd\n  lr: [1,\n")
    _assert_refused([str(path), "--policy", str(policy)], "not valid YAML", str(policy))


def test_structured_pruning_of_a_gru_is_refused_before_training(tmp_path: Path) -> None:
    path = _write(tmp_path, "model.py", """
import torch
from torch import nn

class M(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(10, 4)
        self.rnn = nn.GRU(4, 8, batch_first=True)
        self.head = nn.Linear(8, 10)

    def forward(self, x):
        return self.head(self.rnn(self.emb(x))[0]).mean(1)

def build_model(hp):
    return M()

def datasets():
    x = torch.randint(0, 10, (16, 5))
    y = torch.randint(0, 10, (16,))
    return (x, y), (x, y)
""")
    _assert_refused([str(path), "--set", "prune.method=structured", "--set", "prune.ratio=0.5",
                     "--threads", "1"], "removes nothing from this model")


def test_tiny_model_trains(tmp_path: Path) -> None:
    path = _write(tmp_path, "model.py", TINY)
    out = tmp_path / "out.json"
    code, output, _ = _run(str(path), "--set", "epochs=2", "--threads", "1", "--json", str(out))
    assert code == 0, output
    assert out.is_file()


def test_custom_loop_that_raises(tmp_path: Path) -> None:
    path = _write(tmp_path, "model.py", "OBJECTIVE = ('accuracy', 'max')\n\n"
                  "def train(policy, report):\n    raise ValueError('bad shape')\n")
    _assert_refused([str(path), "--threads", "1"], "train() raised ValueError: bad shape",
                    "model.py:4")
