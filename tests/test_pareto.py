"""Tests for autotune.pareto on hand-made points whose fronts, ranks and volumes are known."""

from __future__ import annotations

import math

import numpy as np
import pytest

from autotune import pareto

NAN = float("nan")
INF = float("inf")

# 2-D, minimise: front (1,4),(2,2),(4,1); (3,3) dominated by (2,2), (4,4) by (3,3), (5,5) by all.
POINTS_2D = np.array([[1, 4], [2, 2], [4, 1], [3, 3], [4, 4], [5, 5]], dtype=float)


def test_to_loss_negates_max_columns_only() -> None:
    values = np.array([[0.9, 10.0], [0.5, 20.0]])
    loss = pareto.to_loss(values, ["max", "min"])
    np.testing.assert_array_equal(loss, [[-0.9, 10.0], [-0.5, 20.0]])
    np.testing.assert_array_equal(values, [[0.9, 10.0], [0.5, 20.0]])  # input untouched


def test_to_loss_empty_keeps_columns() -> None:
    assert pareto.to_loss([], ["min", "max"]).shape == (0, 2)


@pytest.mark.parametrize(
    ("values", "directions", "match"),
    [
        ([[1.0, 2.0]], ["min", "maximize"], r"one of \['min', 'max'\].*'maximize'"),
        ([[1.0, 2.0]], ["min"], r"shape \(n, 1\).*\(1, 2\)"),
        ([1.0, 2.0], ["min", "min"], r"shape \(n, 2\).*\(2,\)"),
    ],
)
def test_to_loss_rejects_bad_input(values: list, directions: list[str], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        pareto.to_loss(values, directions)


def test_ranks_2d() -> None:
    np.testing.assert_array_equal(pareto.nondominated_ranks(POINTS_2D), [0, 0, 0, 1, 2, 3])


def test_mask_2d() -> None:
    np.testing.assert_array_equal(
        pareto.pareto_mask(POINTS_2D), [True, True, True, False, False, False]
    )


def test_ranks_and_mask_3d() -> None:
    pts = np.array(
        [
            [1, 5, 5],  # front
            [5, 1, 5],  # front
            [5, 5, 1],  # front
            [2, 6, 6],  # dominated by (1,5,5) only -> rank 1
            [3, 7, 7],  # dominated by (2,6,6) -> rank 2
            [3, 3, 3],  # front: best in none but dominated by nobody
        ],
        dtype=float,
    )
    np.testing.assert_array_equal(pareto.nondominated_ranks(pts), [0, 0, 0, 1, 2, 0])
    np.testing.assert_array_equal(pareto.pareto_mask(pts), [1, 1, 1, 0, 0, 1])


def test_max_min_mixing() -> None:
    # acc (max) vs cost (min): (0.9, 10) and (0.3, 1) trade off; (0.9, 10) dominates (0.5, 20).
    values = np.array([[0.9, 10.0], [0.5, 20.0], [0.3, 1.0]])
    loss = pareto.to_loss(values, ["max", "min"])
    np.testing.assert_array_equal(pareto.pareto_mask(loss), [True, False, True])
    np.testing.assert_array_equal(pareto.nondominated_ranks(loss), [0, 1, 0])
    # Read as both-min, the answer would differ: (0.3, 1) dominates everything.
    np.testing.assert_array_equal(pareto.pareto_mask(values), [False, False, True])


def test_duplicates_all_stay_on_front() -> None:
    pts = np.array([[1, 2], [1, 2], [2, 1], [3, 3]], dtype=float)
    np.testing.assert_array_equal(pareto.pareto_mask(pts), [True, True, True, False])
    np.testing.assert_array_equal(pareto.nondominated_ranks(pts), [0, 0, 0, 1])


def test_non_finite_rows_are_dominated_by_everything() -> None:
    pts = np.array([[1, 4], [NAN, 0], [2, 2], [-INF, 0], [3, 3]], dtype=float)
    np.testing.assert_array_equal(pareto.nondominated_ranks(pts), [0, 2, 0, 2, 1])
    np.testing.assert_array_equal(pareto.pareto_mask(pts), [True, False, True, False, False])
    assert pareto.hypervolume(pts, [4, 5]) == pytest.approx(
        pareto.hypervolume(pts[[0, 2, 4]], [4, 5])
    )
    crowd = pareto.crowding_distance(pts)
    assert crowd[1] == 0 and crowd[3] == 0
    assert list(pareto.front_order(pts)[-2:]) == [1, 3]
    np.testing.assert_allclose(pareto.reference_point(pts), [3.2, 4.2])


def test_all_rows_non_finite() -> None:
    pts = np.array([[NAN, 1.0], [INF, 2.0]])
    np.testing.assert_array_equal(pareto.nondominated_ranks(pts), [0, 0])
    assert not pareto.pareto_mask(pts).any()
    assert pareto.hypervolume(pts, [5, 5]) == 0.0
    with pytest.raises(ValueError, match="none finite"):
        pareto.knee_index(pts)


def test_empty_input() -> None:
    empty = np.empty((0, 2))
    assert pareto.nondominated_ranks(empty).shape == (0,)
    assert pareto.pareto_mask(empty).shape == (0,)
    assert pareto.crowding_distance(empty).shape == (0,)
    assert pareto.front_order(empty).shape == (0,)
    assert pareto.hypervolume(empty, [1.0, 1.0]) == 0.0
    with pytest.raises(ValueError, match="0 rows"):
        pareto.reference_point(empty)
    with pytest.raises(ValueError, match="0 rows"):
        pareto.knee_index(empty)


def test_crowding_extremes_are_inf_and_interior_known() -> None:
    # Range 4 in both objectives; (1,3) has neighbour gaps 2, 2 -> 1.0; (2,2) gaps 3, 3 -> 1.5.
    front = np.array([[0, 4], [1, 3], [2, 2], [4, 0]], dtype=float)
    crowd = pareto.crowding_distance(front)
    assert math.isinf(crowd[0]) and math.isinf(crowd[3])
    np.testing.assert_allclose(crowd[1:3], [0.5 + 0.5, 0.75 + 0.75])


def test_crowding_two_points_and_flat_objective() -> None:
    assert np.isinf(pareto.crowding_distance(np.array([[0.0, 1.0], [1.0, 0.0]]))).all()
    # Second objective constant: it contributes nothing and marks no extreme.
    crowd = pareto.crowding_distance(np.array([[0.0, 1.0], [1.0, 1.0], [3.0, 1.0]]))
    assert math.isinf(crowd[0]) and math.isinf(crowd[2])
    assert crowd[1] == pytest.approx(1.0)


def test_hypervolume_staircase() -> None:
    pts = np.array([[1, 3], [2, 2], [3, 1]], dtype=float)
    assert pareto.hypervolume(pts, [4, 4]) == pytest.approx(6.0)


def test_hypervolume_ignores_points_outside_reference() -> None:
    pts = np.array([[1, 3], [2, 2], [3, 1], [5, 0], [4, 1]], dtype=float)
    assert pareto.hypervolume(pts, [4, 4]) == pytest.approx(6.0)


def test_hypervolume_3d_box() -> None:
    assert pareto.hypervolume(np.array([[1.0, 1.0, 1.0]]), [3, 2, 4]) == pytest.approx(2 * 1 * 3)


def test_hypervolume_rejects_bad_reference() -> None:
    with pytest.raises(ValueError, match=r"2 finite numbers.*\[1\.0\]"):
        pareto.hypervolume(np.array([[0.0, 0.0]]), [1.0])
    with pytest.raises(ValueError, match="finite"):
        pareto.hypervolume(np.array([[0.0, 0.0]]), [1.0, NAN])


@pytest.mark.parametrize("k", [2, 3])
def test_hypervolume_matches_optuna(k: int) -> None:
    try:
        from optuna._hypervolume import compute_hypervolume
    except ImportError:  # private API: it may move between optuna releases
        pytest.skip("optuna._hypervolume.compute_hypervolume is not in this optuna release")
    rng = np.random.default_rng(k)
    pts = rng.uniform(0, 1, size=(40, k))
    ref = pareto.reference_point(pts)
    expected = compute_hypervolume(pts, ref)
    assert pareto.hypervolume(pts, ref) == pytest.approx(expected, rel=1e-12)


def test_reference_point_margin_and_zero_range() -> None:
    pts = np.array([[1.0, 5.0, 0.0], [3.0, 5.0, 0.0]])
    # Column 0: range 2 -> 3 + 0.2; column 1: range 0 -> 5 + 0.1*5; column 2: nadir 0 -> 0 + 0.1.
    np.testing.assert_allclose(pareto.reference_point(pts), [3.2, 5.5, 0.1])
    np.testing.assert_allclose(pareto.reference_point(np.array([[-2.0]])), [-1.8])
    with pytest.raises(ValueError, match="margin=0"):
        pareto.reference_point(pts, margin=0)


def test_reference_point_makes_every_point_count() -> None:
    pts = POINTS_2D
    ref = pareto.reference_point(pts)
    assert (pts < ref).all()


def test_normalise() -> None:
    loss = np.array([[1.0, 10.0, 7.0], [3.0, 20.0, 7.0]])
    out = pareto.normalise(loss, [1.0, 10.0, 7.0], [3.0, 30.0, 7.0])
    np.testing.assert_allclose(out, [[0.0, 0.0, 0.0], [1.0, 0.5, 0.0]])


def test_knee_of_known_front() -> None:
    # Front (0,10),(1,3),(3,1),(10,0) normalised over [0,10]: (0.1,0.3) and (0.3,0.1) tie at the
    # smallest distance -> the lower index wins; the dominated (2,4) row is ignored.
    loss = np.array([[0, 10], [2, 4], [3, 1], [1, 3], [10, 0]], dtype=float)
    assert pareto.knee_index(loss) == 2
    assert pareto.knee_index(loss[[0, 1, 3, 2, 4]]) == 2
    # Break the tie: (1, 2) is nearer the ideal.
    loss2 = np.array([[0, 10], [3, 1], [1, 2], [10, 0]], dtype=float)
    assert pareto.knee_index(loss2) == 2


def test_knee_of_single_point_and_max_objective() -> None:
    assert pareto.knee_index(np.array([[5.0, 5.0]])) == 0
    values = np.array([[0.95, 100.0], [0.94, 10.0], [0.50, 1.0], [0.90, 50.0]])
    loss = pareto.to_loss(values, ["max", "min"])
    assert pareto.knee_index(loss) == 1


def test_front_order_rank_then_crowding() -> None:
    # Rank 0: (0,4),(1,3),(2,2),(4,0) with crowding inf,1.0,1.5,inf; rank 1: (3,3); rank 2: (5,5).
    loss = np.array([[5, 5], [1, 3], [3, 3], [0, 4], [2, 2], [4, 0]], dtype=float)
    np.testing.assert_array_equal(pareto.front_order(loss), [3, 5, 4, 1, 2, 0])


def test_rejects_one_dimensional_loss() -> None:
    with pytest.raises(ValueError, match=r"2-D.*\(3,\)"):
        pareto.pareto_mask(np.array([1.0, 2.0, 3.0]))
