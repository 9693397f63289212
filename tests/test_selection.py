"""Selection rules: parsing every form and every error, and choosing on hand-made trials."""

from __future__ import annotations

import pytest

from autotune.errors import SelectionError
from autotune.objectives import Objective
from autotune.results import Front, compute_front
from autotune.selection import Condition, Rule, natural_directions, parse_rule, select
from autotune.study import TrialView

OBJ = [Objective("accuracy", "max"), Objective("train_time_s", "min")]


def tv(n: int, acc: float, t: float, *, status: str = "finished", feasible: bool = True,
       baseline: bool = False, **extra: float) -> TrialView:
    return TrialView(number=n, status=status, policy={"optimizer.lr": 0.001 * (n + 1)},
                     metrics={"accuracy": acc, "train_time_s": t, **extra}, curves=[],
                     stopped_at_epoch=3 if status == "stopped" else None, error=None,
                     ray_trial_id=None, baseline=baseline, feasible=feasible, started=None,
                     ended=float(n))


@pytest.fixture
def front() -> Front:
    views = [
        tv(0, 0.990, 10.0, baseline=True, params=1000.0),
        tv(1, 0.985, 4.0, params=500.0),      # front
        tv(2, 0.950, 1.0, params=100.0),      # front
        tv(3, 0.980, 6.0, params=800.0),      # dominated by 1
        tv(4, 0.999, 0.5, status="stopped", params=10.0),  # never eligible
        tv(5, 0.9972, 0.4, feasible=False, params=10.0),   # infeasible
        tv(6, 0.900, 0.9, params=50.0, f1=0.7),            # front
    ]
    return compute_front(views, OBJ)


# ---- parsing ------------------------------------------------------------------------------

@pytest.mark.parametrize("text, rule", [
    ("knee", Rule("knee")),
    ("  KNEE ", Rule("knee")),
    ("best:accuracy", Rule("best", "accuracy")),
    ("best : train_time_s", Rule("best", "train_time_s")),
    ("min:train_time_s where accuracy>=0.97",
     Rule("min", "train_time_s", (Condition("accuracy", ">=", 0.97),))),
    ("max:accuracy where train_time_s < 5 and params<=1e3",
     Rule("max", "accuracy", (Condition("train_time_s", "<", 5.0),
                              Condition("params", "<=", 1000.0)))),
    ("MIN:params WHERE accuracy > .9 AND train_time_s == 4",
     Rule("min", "params", (Condition("accuracy", ">", 0.9),
                            Condition("train_time_s", "==", 4.0)))),
    ("min:val_loss where accuracy>=-1",
     Rule("min", "val_loss", (Condition("accuracy", ">=", -1.0),))),
])
def test_parse_valid(text: str, rule: Rule) -> None:
    got = parse_rule(text)
    assert (got.kind, got.metric, got.where) == (rule.kind, rule.metric, rule.where)
    assert got.text == text.strip()


@pytest.mark.parametrize("text, why", [
    ("", "it is empty"),
    ("   ", "it is empty"),
    ("pick:accuracy", "must start with knee, best:, min: or max:, not 'pick'"),
    ("kneee", "not 'kneee'"),
    ("best", "expected KIND:METRIC"),
    ("min:", "expected KIND:METRIC"),
    ("min:1abc", "expected KIND:METRIC"),
    ("best:accuracy extra", "expected KIND:METRIC"),
    ("min:train_time_s where", "`where` must be followed by a condition"),
    ("min:train_time_s where accuracy", "condition 'accuracy' is not METRIC OP NUMBER"),
    ("min:train_time_s where accuracy>=high", "condition 'accuracy>=high'"),
    ("min:train_time_s where accuracy=>0.9", "condition 'accuracy=>0.9'"),
    ("min:train_time_s where accuracy!=0.9", "condition 'accuracy!=0.9'"),
    ("min:train_time_s where accuracy>=0.9 and", "condition 'accuracy>=0.9 and'"),
    ("min:train_time_s where accuracy>=0.9 or params<5", "condition 'accuracy>=0.9 or params<5'"),
    ("min:train_time_s where __import__('os')>1", "is not METRIC OP NUMBER"),
])
def test_parse_errors_show_grammar(text: str, why: str) -> None:
    with pytest.raises(SelectionError, match="not valid") as info:
        parse_rule(text)
    msg = str(info.value)
    assert why in msg
    assert "RULE := knee | KIND:METRIC" in msg and "OP := <= | >= | < | > | ==" in msg
    assert "[" not in msg  # the CLI prints through rich: brackets would be eaten as markup


# ---- choosing -----------------------------------------------------------------------------

def test_knee_is_a_front_member(front: Front) -> None:
    knee = select(parse_rule("knee"), front)
    assert knee.number in {t.number for t in front.members}
    assert knee.number == front.knee().number


@pytest.mark.parametrize("text, number", [
    ("best:accuracy", 0),                 # max; stopped 4 and infeasible 5 are not eligible
    ("best:train_time_s", 6),             # objective direction min
    ("best:params", 6),                   # a cost: min
    ("max:train_time_s", 0),
    ("min:train_time_s where accuracy>=0.97", 1),
    ("min:train_time_s where accuracy>=0.95", 2),
    ("min:params where accuracy>=0.98 and train_time_s<6", 1),
    ("max:accuracy where train_time_s<=4", 1),
    ("min:train_time_s where accuracy==0.98", 3),
    ("max:f1", 6),
])
def test_select(front: Front, text: str, number: int) -> None:
    assert select(parse_rule(text), front).number == number


def test_best_uses_the_models_objective_direction(front: Front) -> None:
    # f1 is neither an objective nor a cost: only the model's OBJECTIVE can say which way is up.
    with pytest.raises(SelectionError, match=r"better high or low.*max:f1 or --select min:f1"):
        select(parse_rule("best:f1"), front)
    dirs = natural_directions(front, ("f1", "max"))
    assert select(parse_rule("best:f1"), front, dirs).number == 6
    assert natural_directions(front)["val_loss"] == "min"


def test_unknown_metric_lists_the_metrics(front: Front) -> None:
    with pytest.raises(SelectionError, match="names metric 'acc'") as info:
        select(parse_rule("min:train_time_s where acc>=0.9"), front)
    assert "accuracy, f1, params, train_time_s" in str(info.value)


def test_config_keys_are_not_metrics() -> None:
    f = compute_front([tv(0, 0.9, 1.0, **{"config/threads": 1.0})], OBJ)
    with pytest.raises(SelectionError) as info:
        select(parse_rule("best:nothing"), f)
    assert "config/" not in str(info.value)


def test_nothing_satisfies_names_the_closest(front: Front) -> None:
    # Trials 4 (stopped) and 5 (infeasible) would pass, but are not eligible.
    with pytest.raises(SelectionError) as info:
        select(parse_rule("min:train_time_s where accuracy>=0.999"), front)
    msg = str(info.value)
    assert "no trial has accuracy>=0.999" in msg
    assert "the closest is trial 0 with accuracy=0.99" in msg
    assert "relax the bound" in msg


def test_nothing_satisfies_second_condition(front: Front) -> None:
    with pytest.raises(SelectionError) as info:
        select(parse_rule("min:params where accuracy>=0.98 and train_time_s<2"), front)
    msg = str(info.value)
    assert "no trial has train_time_s<2 among the trials with accuracy>=0.98" in msg
    assert "closest is trial 1 with train_time_s=4" in msg


def test_no_eligible_trial() -> None:
    f = compute_front([tv(0, 0.9, 1.0, status="stopped"), tv(1, 0.9, 1.0, status="failed")], OBJ)
    for text in ("knee", "best:accuracy"):
        with pytest.raises(SelectionError, match="no finished, feasible trial"):
            select(parse_rule(text), f)


def test_ties_prefer_front_members_then_earlier_trials() -> None:
    f = compute_front([tv(0, 0.9, 2.0), tv(1, 0.95, 2.0), tv(2, 0.95, 2.0)], OBJ)
    assert select(parse_rule("min:train_time_s"), f).number == 1
