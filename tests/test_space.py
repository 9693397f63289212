"""Tests for autotune.space: YAML search spaces, their validation and Optuna sampling."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import optuna
import pytest

from autotune.errors import SpaceError
from autotune.policy import Policy
from autotune.space import (
    DEFAULT_SPACE,
    SHIPPED_SPACES,
    Param,
    SearchSpace,
    find_default_space,
    knob_names,
)

optuna.logging.set_verbosity(optuna.logging.WARNING)


def _samples(space: SearchSpace, n: int = 200, seed: int = 0) -> list[dict[str, Any]]:
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
    return [space.suggest(study.ask()) for _ in range(n)]


def _write(tmp_path: Path, text: str, name: str = "space.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


# ---- bad spaces: each names the file and the key ---------------------------------------------
BAD_SPACES = [
    (
        "optimizer.lrr: {loguniform: [1.0e-4, 1.0e-2]}",
        r"optimizer\.lrr.*did you mean 'optimizer\.lr'",
    ),
    ("optimizer.lr: {normal: [0.0, 1.0]}", r"optimizer\.lr.*unknown distribution 'normal'"),
    ("optimizer.lr: {loguniforn: [1.0e-4, 1.0e-2]}", r"did you mean 'loguniform'"),
    ("optimizer.lr: {uniform: [0.1, 0.01]}", r"optimizer\.lr.*low 0\.1 > high 0\.01"),
    ("optimizer.lr: {loguniform: [0.0, 0.1]}", r"optimizer\.lr.*log scale needs bounds > 0"),
    ("model.width: {int: [0, 64], log: true}", r"model\.width.*log scale needs bounds > 0"),
    ("batch_size: {choice: []}", r"batch_size.*non-empty list"),
    ("optimizer.lr: {loguniform: [1.0e-4, 1.0e-2], step: 1.0e-4}", r"optimizer\.lr.*'step'.*log"),
    ("model.width: {int: [8, 64], step: 5}", r"model\.width.*not a multiple of step 5"),
    ("model.width: {int: [8.5, 64]}", r"model\.width.*int bounds must be integers"),
    ("batch_size: {uniform: [16, 64]}", r"batch_size.*integer knob"),
    ("model.w: {uniform: [1]}", r"model\.w.*\[low, high\]"),
    ("model.w: {int: [1, 4], sep: 1}", r"model\.w.*option 'sep'.*did you mean 'step'"),
    ("precision: {choice: [fp32, fp64]}", r"precision.*'fp64'.*'fp32', 'bf16', 'fp16' or 'int8'"),
    ("prune.ratio: {uniform: [0.1, 0.99]}", r"prune\.ratio.*0\.99.*less than or equal to 0\.95"),
    ("precision: fp64", r"precision.*'fp64'"),
    ("optimizer: {name: sgd}", r"'optimizer' is a section"),
    (
        "optimizer.momentum: {uniform: [0.5, 0.9], when: {optimizer.name: sgd}}\n"
        "optimizer.name: {choice: [sgd, adam]}",
        r"optimizer\.momentum.*'optimizer\.name', which is defined later",
    ),
    (
        "optimizer.momentum: {uniform: [0.5, 0.9], when: {optimizer.nme: sgd}}",
        r"optimizer\.momentum.*unknown key 'optimizer\.nme'",
    ),
    (
        "optimizer.name: {choice: [sgd, adam]}\n"
        "optimizer.momentum: {uniform: [0.5, 0.9], when: {optimizer.name: rmsprop}}",
        r"optimizer\.momentum.*rmsprop can never happen",
    ),
    (
        "schedule.name: cosine\nschedule.step_size: {int: [1, 4], when: {schedule.name: step}}",
        r"schedule\.step_size.*step can never happen.*fixed cosine",
    ),
    ("- optimizer.lr\n- batch_size", r"holds a list, not a mapping"),
    ("", r"holds nothing"),
    ("optimizer.lr: {loguniform: [1.0e-4, 1.0e-2]\n", r"not valid YAML at line \d+"),
    (
        "batch_size: {choice: [32]}\nbatch_size: {choice: [64]}",
        r"batch_size \(line 2\): defined twice \(first at line 1\)",
    ),
]


@pytest.mark.parametrize(("text", "match"), BAD_SPACES)
def test_bad_space_raises_space_error_naming_file_and_key(
    tmp_path: Path, text: str, match: str
) -> None:
    path = _write(tmp_path, text)
    with pytest.raises(SpaceError, match=match) as info:
        SearchSpace.load(path)
    assert str(path) in str(info.value)
    assert "Fix:" in str(info.value)


def test_all_problems_are_reported_at_once(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        "optimizer.lrr: {loguniform: [1.0e-4, 1.0e-2]}\n"
        "batch_size: {choice: []}\n"
        "precision: {choice: [fp64]}\n",
    )
    with pytest.raises(SpaceError, match="3 problems") as info:
        SearchSpace.load(path)
    message = str(info.value)
    for key, line in (("optimizer.lrr", 1), ("batch_size", 2), ("precision", 3)):
        assert f"{key} (line {line})" in message


def test_cross_field_rules_do_not_fail_at_load() -> None:
    # prune.method=magnitude alone violates "needs ratio > 0", momentum alone violates the adamw
    # default: both only make sense together with other knobs, so load must accept them.
    space = SearchSpace.from_dict(
        {"prune.method": {"choice": ["none", "magnitude"]}, "optimizer.momentum": 0.9}
    )
    assert space.keys() == ["prune.method", "optimizer.momentum"]


def test_missing_file_is_a_space_error(tmp_path: Path) -> None:
    with pytest.raises(SpaceError, match=re.escape(str(tmp_path / "nope.yaml"))):
        SearchSpace.load(tmp_path / "nope.yaml")


def test_from_dict_names_its_source() -> None:
    with pytest.raises(SpaceError, match=r"Invalid search space cli-space: optimizer\.lrr"):
        SearchSpace.from_dict({"optimizer.lrr": 0.1}, source="cli-space")


# ---- sampling ----------------------------------------------------------------------------------
def test_conditionals_sample_only_when_conditions_hold() -> None:
    space = SearchSpace.from_dict(
        {
            "optimizer.name": {"choice": ["sgd", "adam", "adamw", "rmsprop"]},
            "optimizer.momentum": {
                "uniform": [0.5, 0.9],
                "when": {"optimizer.name": ["sgd", "rmsprop"]},
            },
            "optimizer.nesterov": {"choice": [True, False], "when": {"optimizer.name": "sgd"}},
        }
    )
    samples = _samples(space)
    names = {s["optimizer.name"] for s in samples}
    assert names == {"sgd", "adam", "adamw", "rmsprop"}
    for s in samples:
        assert ("optimizer.momentum" in s) == (s["optimizer.name"] in ("sgd", "rmsprop"))
        assert ("optimizer.nesterov" in s) == (s["optimizer.name"] == "sgd")
        Policy().with_overrides(s)


def test_when_on_an_inactive_key_is_false() -> None:
    space = SearchSpace.from_dict(
        {
            "prune.method": {"choice": ["none", "magnitude"]},
            "prune.schedule": {
                "choice": ["oneshot", "gradual"],
                "when": {"prune.method": "magnitude"},
            },
            "prune.start_epoch": {"int": [0, 2], "when": {"prune.schedule": "gradual"}},
        }
    )
    for s in _samples(space):
        if "prune.start_epoch" in s:
            assert s["prune.method"] == "magnitude" and s["prune.schedule"] == "gradual"
        if s["prune.method"] == "none":
            assert "prune.schedule" not in s and "prune.start_epoch" not in s


def test_when_with_several_conditions_needs_all() -> None:
    space = SearchSpace.from_dict(
        {
            "model.a": {"choice": [1, 2]},
            "model.b": {"choice": ["x", "y"]},
            "model.c": {"uniform": [0.0, 1.0], "when": {"model.a": 1, "model.b": "y"}},
        }
    )
    for s in _samples(space):
        assert ("model.c" in s) == (s["model.a"] == 1 and s["model.b"] == "y")


def test_fixed_values_are_returned_unsampled() -> None:
    space = SearchSpace.from_dict(
        {"schedule.name": "cosine", "model.sizes": [64, 32], "optimizer.lr": {"fixed": 0.01}}
    )
    study = optuna.create_study()
    trial = study.ask()
    assert space.suggest(trial) == {
        "schedule.name": "cosine",
        "model.sizes": [64, 32],
        "optimizer.lr": 0.01,
    }
    assert trial.params == {}  # fixed values are not Optuna parameters


@pytest.mark.parametrize(
    ("spec", "grid"),
    [
        ({"uniform": [0.1, 0.9], "step": 0.05}, [round(0.1 + 0.05 * i, 10) for i in range(17)]),
        ({"int": [8, 64], "step": 8}, list(range(8, 65, 8))),
    ],
)
def test_step_is_respected(spec: dict[str, Any], grid: list[float]) -> None:
    space = SearchSpace.from_dict({"model.x": spec})
    for s in _samples(space):
        assert any(abs(s["model.x"] - g) < 1e-9 for g in grid), s


def test_log_int_and_loguniform_stay_in_range() -> None:
    space = SearchSpace.from_dict(
        {
            "model.width": {"int": [8, 64], "log": True},
            "optimizer.lr": {"loguniform": [1e-4, 1e-2]},
        }
    )
    for s in _samples(space):
        assert isinstance(s["model.width"], int) and 8 <= s["model.width"] <= 64
        assert isinstance(s["optimizer.lr"], float) and 1e-4 <= s["optimizer.lr"] <= 1e-2


def test_samples_are_plain_python_types() -> None:
    space = SearchSpace.load(DEFAULT_SPACE)
    allowed = (bool, int, float, str, type(None), list)
    for s in _samples(space, 50):
        for key, value in s.items():
            assert type(value) in allowed, (key, value)


def test_list_choices_travel_as_json_labels_and_come_back_as_lists() -> None:
    space = SearchSpace.from_dict(
        {
            "optimizer.name": "adam",
            "optimizer.betas": {"choice": [[0.9, 0.999], [0.9, 0.99]]},
            "model.x": {"uniform": [0, 1], "when": {"optimizer.betas": [[0.9, 0.99]]}},
        }
    )
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    seen = set()
    for _ in range(40):
        trial = study.ask()
        s = space.suggest(trial)
        assert s["optimizer.betas"] in ([0.9, 0.999], [0.9, 0.99])
        assert trial.params["optimizer.betas"] in ("[0.9, 0.999]", "[0.9, 0.99]")
        assert ("model.x" in s) == (s["optimizer.betas"] == [0.9, 0.99])
        assert Policy().with_overrides(s).optimizer.betas == tuple(s["optimizer.betas"])
        seen.add(tuple(s["optimizer.betas"]))
    assert len(seen) == 2


def test_choices_optuna_cannot_tell_apart_are_refused() -> None:
    with pytest.raises(SpaceError, match=r"model\.a: choice value true is listed twice"):
        SearchSpace.from_dict({"model.a": {"choice": [1, True]}})


def test_when_keeps_true_apart_from_one() -> None:
    space = SearchSpace.from_dict(
        {"model.a": {"choice": [1, 2]}, "model.b": {"fixed": 0, "when": {"model.a": [1]}}}
    )
    assert space.params[1].active({"model.a": 1}) and not space.params[1].active({"model.a": True})


def test_trial_params_encode_for_enqueue() -> None:
    space = SearchSpace.load(DEFAULT_SPACE)
    params = space.trial_params(
        {"optimizer.name": "adam", "optimizer.betas": [0.9, 0.99], "optimizer.lr": 1e-3, "seed": 3}
    )
    assert params == {
        "optimizer.name": "adam",
        "optimizer.betas": "[0.9, 0.99]",
        "optimizer.lr": 1e-3,
    }
    study = optuna.create_study()
    study.enqueue_trial(params)
    s = space.suggest(study.ask())
    assert s["optimizer.betas"] == [0.9, 0.99] and s["optimizer.lr"] == 1e-3


# ---- fix, keys, summary ------------------------------------------------------------------------
def test_fix_replaces_in_place_keeps_when_and_appends_new_keys() -> None:
    space = SearchSpace.from_dict(
        {
            "optimizer.name": {"choice": ["sgd", "adam"]},
            "optimizer.momentum": {"uniform": [0.5, 0.9], "when": {"optimizer.name": "sgd"}},
            "batch_size": {"choice": [32, 64]},
        }
    )
    fixed = space.fix({"optimizer.momentum": 0.95, "epochs": 3})
    assert fixed.keys() == ["optimizer.name", "optimizer.momentum", "batch_size", "epochs"]
    assert fixed.params[1] == Param(
        "optimizer.momentum", "fixed", choices=(0.95,), when={"optimizer.name": ("sgd",)}
    )
    for s in _samples(fixed, 40):
        assert s["epochs"] == 3
        assert s.get("optimizer.momentum") == (0.95 if s["optimizer.name"] == "sgd" else None)
    assert space.keys() == ["optimizer.name", "optimizer.momentum", "batch_size"]  # unchanged


def test_fix_refuses_unknown_keys_and_bad_values() -> None:
    space = SearchSpace.from_dict({"batch_size": {"choice": [32, 64]}}, source="s.yaml")
    with pytest.raises(
        SpaceError,
        match=r"s\.yaml.*2 problems.*epoch.*did you mean 'epochs'.*"
        r"batch_size.*greater than or equal to 1",
    ):
        space.fix({"epoch": 3, "batch_size": 0})


def test_distributions_summary() -> None:
    space = SearchSpace.load(SHIPPED_SPACES / "default.yaml")
    summary = space.distributions_summary()
    assert list(summary) == space.keys()
    assert summary["optimizer.lr"] == "loguniform[0.0001, 0.03]"
    assert (
        summary["optimizer.momentum"] == "uniform[0.5, 0.98] if optimizer.name in [sgd, rmsprop]"
    )
    assert summary["grad_clip"] == "choice[null, 0.5, 1.0, 5.0]"
    assert summary["prune.ratio"].startswith("uniform[0.1, 0.9] step 0.05")
    assert SearchSpace.from_dict(
        {"model.w": {"int": [8, 64], "log": True}}
    ).distributions_summary() == {"model.w": "int[8, 64] log"}
    assert all(len(v) < 500 for v in summary.values())  # MLflow's param value limit


def test_check_samples_reports_cross_field_conflicts() -> None:
    space = SearchSpace.from_dict(
        {"optimizer.name": {"choice": ["sgd", "adam"]}, "optimizer.momentum": 0.9}, source="s.yaml"
    )
    with pytest.raises(
        SpaceError, match=r"s\.yaml produces invalid policies.*optimizer\.momentum"
    ):
        space.check_samples()


# ---- knobs are derived from the Policy schema ---------------------------------------------------
def test_knob_names_come_from_the_policy_schema() -> None:
    names = set(knob_names())
    for optional in (
        "optimizer.momentum",
        "optimizer.nesterov",
        "optimizer.betas",
        "schedule.step_size",
        "schedule.gamma",
        "schedule.min_lr_ratio",
        "schedule.pct_start",
        "prune.at_epoch",
        "prune.start_epoch",
        "prune.end_epoch",
        "grad_clip",
    ):
        assert optional in names
    assert set(Policy().flat()) - {"model"} <= names
    assert not any(n.startswith("model") for n in names)


# ---- shipped spaces ----------------------------------------------------------------------------
SHIPPED = sorted(SHIPPED_SPACES.glob("*.yaml"))


def test_the_four_spaces_are_shipped() -> None:
    assert {p.stem for p in SHIPPED} >= {"default", "digits", "charlm", "regression"}


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.stem)
def test_shipped_space_samples_are_valid_policies(path: Path) -> None:
    space = SearchSpace.load(path)
    base = Policy().with_overrides({"epochs": 10})
    for sample in _samples(space, 200):
        policy = base.with_overrides(sample)
        assert {k[len("model.") :] for k in sample if k.startswith("model.")} == set(policy.model)
    space.fix({"epochs": 10}).check_samples()


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.stem)
def test_shipped_spaces_stay_valid_with_a_two_epoch_budget(path: Path) -> None:
    SearchSpace.load(path).fix({"epochs": 2}).check_samples()


def test_default_space_covers_every_searchable_knob() -> None:
    expected = {
        "optimizer.name", "optimizer.lr", "optimizer.weight_decay", "optimizer.momentum",
        "optimizer.nesterov", "optimizer.betas",
        "schedule.name", "schedule.warmup_epochs", "schedule.step_size", "schedule.gamma",
        "schedule.min_lr_ratio", "schedule.pct_start",
        "batch_size", "grad_accum", "grad_clip", "label_smoothing", "precision",
        "prune.method", "prune.ratio", "prune.schedule",
    }  # fmt: skip
    # Deliberately absent: epochs (--epochs), seed, and the epoch-relative pruning knobs whose
    # defaults scale with the budget.
    not_searched = {"epochs", "seed", "prune.at_epoch", "prune.start_epoch", "prune.end_epoch"}
    keys = set(SearchSpace.load(DEFAULT_SPACE).keys())
    assert keys == expected
    assert expected | not_searched == set(knob_names())  # a new Policy knob must be placed


def test_study_spaces_fit_their_models() -> None:
    model_keys = {
        "digits": {"model.width", "model.dropout"},
        "charlm": {"model.hidden", "model.embed", "model.layers", "model.dropout"},
        "regression": {"model.hidden", "model.depth", "model.dropout"},
    }
    for name, keys in model_keys.items():
        space = SearchSpace.load(SHIPPED_SPACES / f"{name}.yaml")
        assert {k for k in space.keys() if k.startswith("model.")} == keys
        assert ("label_smoothing" in space.keys()) == (name == "digits")
        assert {"prune.method", "precision"} <= set(space.keys())


# ---- find_default_space ------------------------------------------------------------------------
def test_find_default_space(tmp_path: Path) -> None:
    model = tmp_path / "study" / "model.py"
    model.parent.mkdir()
    model.write_text("")
    assert find_default_space(model, None) == DEFAULT_SPACE
    _write(tmp_path, "batch_size: 32", name="mine.yaml")
    assert find_default_space(model, "../mine.yaml") == (tmp_path / "mine.yaml").resolve()
    with pytest.raises(SpaceError, match=r"SEARCH_SPACE='missing\.yaml'"):
        find_default_space(model, "missing.yaml")
