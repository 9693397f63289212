"""Pareto math on minimisation ("loss") arrays: ranks, front, crowding, hypervolume, knee."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import moocore
import numpy as np

Direction = Literal["min", "max"]
Objective = tuple[str, Direction]

_DIRECTIONS = ("min", "max")

# Conventions shared by every function below:
# * `loss` is an (n, k) float array where every column is minimised (see `to_loss`).
# * A row with any NaN or ±inf is a failed trial: dominated by every finite row, never on the
#   front, excluded from hypervolume, crowding 0. Such rows never reach moocore.


def to_loss(
    values: np.ndarray | Sequence[Sequence[float]], directions: Sequence[str]
) -> np.ndarray:
    """Return a float copy of `values` (n, k), "max" columns negated so that all columns minimise.

    Normalising once here (like optuna's `_normalize_value`) keeps the sign out of later steps.
    """
    dirs = list(directions)
    bad = [d for d in dirs if d not in _DIRECTIONS]
    if bad:
        raise ValueError(f"directions must each be one of {list(_DIRECTIONS)}, but got {bad}.")
    arr = np.array(values, dtype=float)
    if arr.size == 0:
        arr = arr.reshape(0, len(dirs))
    if arr.ndim != 2 or arr.shape[1] != len(dirs):
        raise ValueError(
            f"values must have shape (n, {len(dirs)}) to match directions={dirs}, "
            f"but got shape {arr.shape}."
        )
    arr[:, [d == "max" for d in dirs]] *= -1.0
    return arr


def _as_loss(loss: np.ndarray | Sequence[Sequence[float]]) -> np.ndarray:
    arr = np.asarray(loss, dtype=float)
    if arr.ndim != 2:
        raise ValueError(f"loss must be a 2-D (n, k) array, but got shape {arr.shape}.")
    return arr


def _finite_rows(loss: np.ndarray) -> np.ndarray:
    return np.isfinite(loss).all(axis=1)


def nondominated_ranks(loss: np.ndarray) -> np.ndarray:
    """Non-dominated sorting rank per row: 0 = first front, 1 = front once 0 is removed, ...

    Identical rows share a rank. Failed (non-finite) rows get max(finite ranks) + 1, or 0 if no row
    is finite. moocore's `pareto_rank` is already 0-based.
    """
    loss = _as_loss(loss)
    ok = _finite_rows(loss)
    ranks = np.zeros(len(loss), dtype=int)
    if ok.any():
        ranks[ok] = moocore.pareto_rank(loss[ok])
        ranks[~ok] = ranks[ok].max() + 1
    return ranks


def pareto_mask(loss: np.ndarray) -> np.ndarray:
    """True for rows on the first front (not dominated by any other row).

    Identical copies of a non-dominated row are all kept on the front (moocore `keep_weakly=True`):
    two trials that measured the same numbers are equally good; dropping one would be arbitrary.
    Failed rows are never on the front.
    """
    loss = _as_loss(loss)
    ok = _finite_rows(loss)
    mask = np.zeros(len(loss), dtype=bool)
    if ok.any():
        mask[ok] = moocore.is_nondominated(loss[ok], keep_weakly=True)
    return mask


def crowding_distance(loss: np.ndarray) -> np.ndarray:
    """NSGA-II crowding distance of each row within the given set (call it on one front).

    Per objective, rows are sorted; the two extremes get inf, every interior row adds the gap
    between its neighbours divided by the objective's range. An objective with zero range adds
    nothing (no row is extreme in it). Failed rows get 0 and do not take part.
    """
    loss = _as_loss(loss)
    dist = np.zeros(len(loss))
    ok = np.flatnonzero(_finite_rows(loss))
    if len(ok) == 0:
        return dist
    if len(ok) <= 2:
        dist[ok] = np.inf
        return dist
    sub = loss[ok]
    part = np.zeros(len(ok))
    for j in range(sub.shape[1]):
        order = np.argsort(sub[:, j], kind="stable")
        col = sub[order, j]
        span = col[-1] - col[0]
        if span <= 0:
            continue
        part[order[0]] = np.inf
        part[order[-1]] = np.inf
        part[order[1:-1]] += (col[2:] - col[:-2]) / span
    dist[ok] = part
    return dist


def hypervolume(loss: np.ndarray, ref: np.ndarray | Sequence[float]) -> float:
    """Hypervolume dominated by the rows of `loss`, bounded by the reference point `ref`.

    Rows not strictly better than `ref` in every objective contribute 0 (moocore ignores them
    silently; optuna's private version raises instead). Failed rows are excluded; none left: 0.0.
    """
    loss = _as_loss(loss)
    ref_arr = np.asarray(ref, dtype=float)
    if ref_arr.shape != (loss.shape[1],) or not np.isfinite(ref_arr).all():
        raise ValueError(
            f"ref must be {loss.shape[1]} finite numbers (one per objective), but got {ref!r}."
        )
    pts = loss[_finite_rows(loss)]
    if len(pts) == 0:
        return 0.0
    return float(moocore.hypervolume(pts, ref=ref_arr))


def reference_point(loss: np.ndarray, margin: float = 0.1) -> np.ndarray:
    """Nadir of the finite rows pushed out by `margin` x range per objective.

    A zero range uses margin x |nadir| instead, or plain `margin` when the nadir is 0, so every
    finite row is strictly better than the reference and contributes to the hypervolume.
    """
    loss = _as_loss(loss)
    if margin <= 0:
        raise ValueError(f"margin must be > 0, but got {margin=}.")
    pts = loss[_finite_rows(loss)]
    if len(pts) == 0:
        raise ValueError(
            f"reference_point needs a finite row, but got {len(loss)} rows, none finite."
        )
    nadir = pts.max(axis=0)
    span = nadir - pts.min(axis=0)
    fallback = np.where(nadir != 0, margin * np.abs(nadir), margin)
    return nadir + np.where(span > 0, margin * span, fallback)


def normalise(
    loss: np.ndarray, lo: np.ndarray | Sequence[float], hi: np.ndarray | Sequence[float]
) -> np.ndarray:
    """Map each objective linearly so `lo` -> 0 and `hi` -> 1.

    Values outside [lo, hi] land outside [0, 1] (no clipping: callers pick the bounds). An
    objective with hi == lo maps to 0.
    """
    loss = _as_loss(loss)
    lo_arr = np.asarray(lo, dtype=float)
    hi_arr = np.asarray(hi, dtype=float)
    span = hi_arr - lo_arr
    safe = np.where(span > 0, span, 1.0)
    return np.where(span > 0, (loss - lo_arr) / safe, 0.0)


def knee_index(loss: np.ndarray) -> int:
    """Index (into `loss`) of the knee of the first front.

    Definition: normalise each objective to [0, 1] over the front's own min and max; the knee is
    the front row closest in Euclidean distance to the ideal point (0, ..., 0). Ties go to the
    lowest index. Raises ValueError when no row is finite.
    """
    loss = _as_loss(loss)
    front = np.flatnonzero(pareto_mask(loss))
    if len(front) == 0:
        raise ValueError(
            f"knee_index needs at least one finite row, but got {len(loss)} rows, none finite."
        )
    pts = loss[front]
    norm = normalise(pts, pts.min(axis=0), pts.max(axis=0))
    # argmin returns the first minimum and `front` is ascending, so ties go to the lowest index.
    return int(front[np.argmin(np.linalg.norm(norm, axis=1))])


def front_order(loss: np.ndarray) -> np.ndarray:
    """Indices of all rows, best first: by non-dominated rank, then by crowding distance within
    that rank's front (larger first, to keep the front spread out), then by index.

    This is the promotion order of the multi-objective successive-halving scheduler.
    """
    loss = _as_loss(loss)
    ranks = nondominated_ranks(loss)
    crowd = np.zeros(len(loss))
    for r in np.unique(ranks):
        members = np.flatnonzero(ranks == r)
        crowd[members] = crowding_distance(loss[members])
    # lexsort: the last key is the primary one.
    return np.lexsort((np.arange(len(loss)), -crowd, ranks))
