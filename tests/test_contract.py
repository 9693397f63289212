"""The model.py contract (DESIGN §2): every broken piece is named with the file and a fix."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
import torch

from autotune.contract import load_model_file
from autotune.errors import ContractError
from tests.conftest import TINY_MODEL

GOOD = TINY_MODEL

# (name, model.py source, phase, expected message fragment). phase: load | datasets | build
CASES = [
    ("syntax error", "def build_model(hp):\n    return (\n\ndef datasets(:\n", "load",
     "syntax error at line"),
    ("import error", "import not_a_real_package_xyz\n", "load", "not_a_real_package_xyz"),
    ("module-level exception", "x = 1 / 0\n", "load", "ZeroDivisionError"),
    ("missing build_model", "def datasets():\n    return [], []\n", "load",
     "no `build_model` function"),
    ("build_model not callable", "build_model = 3\ndef datasets():\n    return [], []\n", "load",
     "`build_model` is a int, not a function"),
    ("build_model takes no argument",
     "def build_model():\n    pass\ndef datasets():\n    return [], []\n", "load",
     "`build_model` must take one argument"),
    ("datasets takes an argument",
     "def build_model(hp):\n    pass\ndef datasets(x):\n    return [], []\n", "load",
     "`datasets` must take no arguments"),
    ("metrics without OBJECTIVE", GOOD + "def metrics(o, t):\n    return {'a': 1.0}\n", "load",
     "no OBJECTIVE"),
    ("OBJECTIVE malformed", GOOD + "OBJECTIVE = ('accuracy', 'up')\n", "load",
     "OBJECTIVE must be a (metric name, 'min' | 'max') pair"),
    ("OBJECTIVE a string", GOOD + "OBJECTIVE = 'accuracy'\n", "load", "OBJECTIVE must be"),
    ("SEARCH_SPACE pointing nowhere", GOOD + "SEARCH_SPACE = 'nowhere/space.yaml'\n", "load",
     "which does not exist"),
    ("datasets returns one set",
     GOOD + "def datasets():\n    return torch.utils.data.TensorDataset(torch.zeros(3, 1))\n",
     "datasets", "must return a pair"),
    ("datasets returns wrong types", GOOD + "def datasets():\n    return 'a', 'b'\n",
     "datasets", "as its train set"),
    ("datasets returns an empty set",
     GOOD + "def datasets():\n    x = torch.zeros(0, 4)\n"
     "    y = torch.zeros(0, dtype=torch.long)\n    return (x, y), (x, y)\n",
     "datasets", "empty train set"),
    ("X and y lengths differ",
     GOOD + "def datasets():\n    return (torch.zeros(5, 4), torch.zeros(4)), "
     "(torch.zeros(2, 4), torch.zeros(2))\n",
     "datasets", "different lengths (5 and 4)"),
    ("datasets raises", GOOD + "def datasets():\n    raise FileNotFoundError('data.csv')\n",
     "datasets", "datasets() raised FileNotFoundError"),
    ("build_model returns a non-Module", GOOD + "def build_model(hp):\n    return 'net'\n",
     "build", "returned str, but it must return a torch.nn.Module"),
    ("build_model raises", GOOD + "def build_model(hp):\n    return hp['width']\n",
     "build", "build_model() raised KeyError"),
]


def _write(tmp_path: Path, source: str) -> Path:
    path = tmp_path / "model.py"
    path.write_text(textwrap.dedent(source))
    return path


@pytest.mark.parametrize(("source", "phase", "fragment"), [c[1:] for c in CASES],
                         ids=[c[0] for c in CASES])
def test_contract_violation_is_named(tmp_path: Path, source: str, phase: str,
                                     fragment: str) -> None:
    path = _write(tmp_path, source)
    with pytest.raises(ContractError) as info:
        mf = load_model_file(path)
        if phase == "datasets":
            mf.datasets()
        elif phase == "build":
            mf.build_model({})
    msg = str(info.value)
    assert fragment in msg
    assert str(path) in msg
    assert info.value.fix, "every contract error carries a fix"
    assert "Fix:" in msg


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ContractError, match="does not exist") as info:
        load_model_file(tmp_path / "nope.py")
    assert str(tmp_path / "nope.py") in str(info.value)
    assert info.value.fix


def test_syntax_error_has_line_number(tmp_path: Path) -> None:
    path = _write(tmp_path, "import torch\n\n\ndef build_model(hp)\n    pass\n")
    with pytest.raises(ContractError, match="line 4"):
        load_model_file(path)


def test_module_error_names_user_line(tmp_path: Path) -> None:
    path = _write(tmp_path, "import torch\nVALUE = {}['missing']\n")
    with pytest.raises(ContractError, match=r"model\.py:2"):
        load_model_file(path)


def test_several_problems_in_one_error(tmp_path: Path) -> None:
    path = _write(tmp_path, "OBJECTIVE = 3\nSEARCH_SPACE = 'x.yaml'\n")
    with pytest.raises(ContractError) as info:
        load_model_file(path)
    msg = str(info.value)
    assert "build_model" in msg and "datasets" in msg and "OBJECTIVE" in msg
    assert "SEARCH_SPACE" in msg


def test_good_model_file(tmp_path: Path) -> None:
    path = _write(tmp_path, GOOD)
    mf = load_model_file(path)
    assert not mf.custom_loop
    assert mf.objective == ("accuracy", "max")
    train, val = mf.datasets()
    assert len(train) == 20 and len(val) == 5
    assert isinstance(mf.build_model({}), torch.nn.Module)
    assert len(mf.sha256) == 64


def test_custom_train_loop_accepted_without_build_model(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        "OBJECTIVE = ('accuracy', 'max')\n"
        "def train(policy, report):\n    report(accuracy=1.0)\n",
    )
    mf = load_model_file(path)
    assert mf.custom_loop
    assert mf.quality_metric == "accuracy"


def test_custom_loop_without_objective_is_refused(tmp_path: Path) -> None:
    path = _write(tmp_path, "def train(policy, report):\n    pass\n")
    with pytest.raises(ContractError, match="no OBJECTIVE"):
        load_model_file(path)


def test_example_studies_meet_the_contract() -> None:
    root = Path(__file__).resolve().parents[1] / "studies"
    for name, objective in (("digits", ("accuracy", "max")), ("charlm", ("perplexity", "min")),
                            ("regression", ("mse", "min"))):
        mf = load_model_file(root / name / "model.py")
        assert mf.objective == objective
        assert mf.search_space is not None and mf.search_space.is_file()
