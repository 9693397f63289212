"""Policy: validation, YAML round-trip, dotted keys, and the refusals of DESIGN §3."""

from __future__ import annotations

from pathlib import Path

import pytest

from autotune.errors import PolicyError
from autotune.policy import Policy, load_policy


def test_defaults_validate() -> None:
    p = Policy()
    assert p.optimizer.name == "adamw"
    assert p.precision == "fp32"
    assert p.prune.method == "none"
    assert Policy.from_dict(p.to_dict()) == p


def test_yaml_round_trip(tmp_path: Path) -> None:
    p = Policy.from_flat(
        {
            "optimizer.name": "sgd",
            "optimizer.momentum": 0.8,
            "optimizer.nesterov": True,
            "schedule.name": "step",
            "schedule.step_size": 2,
            "schedule.warmup_epochs": 1,
            "prune.method": "magnitude",
            "prune.ratio": 0.5,
            "prune.schedule": "gradual",
            "precision": "bf16",
            "model.width": 32,
        }
    )
    f = tmp_path / "policy.yaml"
    f.write_text(p.to_yaml())
    assert load_policy(f) == p


def test_load_exported_file_with_policy_section(tmp_path: Path) -> None:
    f = tmp_path / "export.yaml"
    f.write_text("policy:\n  epochs: 3\nobjectives: {accuracy: 0.9}\n")
    assert load_policy(f).epochs == 3


def test_flat_and_from_flat() -> None:
    p = Policy().with_overrides({"optimizer.lr": "0.01", "model.width": "8", "grad_clip": 1.0})
    flat = p.flat()
    assert flat["optimizer.lr"] == 0.01
    assert flat["model.width"] == 8
    assert flat["grad_clip"] == 1.0
    assert "optimizer.momentum" not in flat  # None stays out
    assert Policy.from_flat(flat) == p
    assert Policy.from_flat({}) == Policy()


def test_with_overrides_parses_like_yaml() -> None:
    p = Policy().with_overrides({"optimizer.betas": "[0.8, 0.9]", "prune.method": "magnitude",
                                 "prune.ratio": "0.3"})
    assert p.optimizer.betas == (0.8, 0.9)
    assert p.prune.ratio == 0.3


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        ({"optimizer.lrr": 0.1}, "optimizer.lrr"),
        ({"bogus": 1}, "bogus"),
        ({"prune.method": "magnitude", "prune.ratio": 0.99}, r"prune\.ratio"),
        ({"optimizer.name": "adam", "optimizer.momentum": 0.9}, r"optimizer\.momentum"),
        ({"prune.ratio": 0.5}, "prune.method='none'"),
        ({"epochs": 3, "schedule.warmup_epochs": 3}, r"warmup_epochs=3.* < epochs=3"),
        ({"epochs": 4, "prune.method": "magnitude", "prune.ratio": 0.5, "prune.at_epoch": 4},
         r"at_epoch=4 must be < epochs=4"),
        ({"precision": "fp8"}, "precision"),
        ({"optimizer.lr": -1}, r"optimizer\.lr"),
        ({"optimizer.name": "sgd", "optimizer.nesterov": True, "optimizer.momentum": 0},
         "nesterov"),
    ],
)
def test_refuses(overrides: dict, match: str) -> None:
    with pytest.raises(PolicyError, match=match) as info:
        Policy.from_flat(overrides)
    assert info.value.fix  # every refusal says how to fix it


def test_collects_several_problems_into_one_error() -> None:
    with pytest.raises(PolicyError) as info:
        Policy.from_dict({"bogus": 1, "batch_size": 0, "optimizer": {"lr": 0}})
    msg = str(info.value)
    assert "3 problems" in msg
    assert "bogus" in msg and "batch_size" in msg and "optimizer.lr" in msg


def test_set_key_into_a_value_is_refused() -> None:
    with pytest.raises(PolicyError, match="is a value, not a section"):
        Policy().with_overrides({"epochs.x": 1})


def test_load_missing_file(tmp_path: Path) -> None:
    with pytest.raises(PolicyError, match="does not exist"):
        load_policy(tmp_path / "nope.yaml")


def test_load_invalid_yaml(tmp_path: Path) -> None:
    f = tmp_path / "bad.yaml"
    f.write_text("optimizer: {name: sgd\n  lr: [1,\n")
    with pytest.raises(PolicyError, match="not valid YAML"):
        load_policy(f)


def test_load_list_instead_of_mapping(tmp_path: Path) -> None:
    f = tmp_path / "list.yaml"
    f.write_text("- epochs: 3\n")
    with pytest.raises(PolicyError, match="holds a list, not a mapping"):
        load_policy(f)


def test_load_bad_knob_names_the_file(tmp_path: Path) -> None:
    f = tmp_path / "p.yaml"
    f.write_text("prune: {method: magnitude, ratio: 2}\n")
    with pytest.raises(PolicyError, match=str(f)):
        load_policy(f)


def test_derived_settings() -> None:
    p = Policy.from_flat({"epochs": 8, "batch_size": 16, "grad_accum": 4})
    assert p.effective_batch_size == 64
    assert p.prune_epoch() == 2  # a quarter of the epochs
    assert p.gradual_window() == (0, 6)


def test_policy_is_frozen() -> None:
    with pytest.raises(Exception):  # noqa: B017 - pydantic's ValidationError
        Policy().epochs = 3  # type: ignore[misc]
