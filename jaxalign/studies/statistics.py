"""The statistics of a study's report: per cell, a mean over seeds with an honest interval;
across cells, the interquartile mean and the probability of improvement with stratified
bootstrap intervals (the rliable statistics: Agarwal et al., "Deep Reinforcement Learning at
the Edge of the Statistical Precipice", NeurIPS 2021).

Shapes are checked, so that seeds and cells (or tasks) cannot be swapped silently:

- one cell's figure over its seeds: ``values`` ``[seeds]``;
- one cell's scores for the across-cell statistics: ``scores`` ``[seeds, tasks]`` (a task is
  one column: a domain pair, a dataset; a study with one task has one column). Cells compared
  with each other must have the same tasks, in the same order.

The interval of a mean over few seeds: a Student t interval by default. With a handful of
seeds a bootstrap interval covers the true mean far less often than it claims (it ignores that
the spread itself is estimated from a few values). Simulated in ``tests/studies/
test_statistics.py`` (400 studies of normal seeds each, nominal 95%): with 3 seeds the t
interval held the true mean in 93.8% of them, BCa in 71.5%, the percentile bootstrap in 73.8%;
with 5 seeds t 95.3%, percentile 82.5%.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

import numpy as np
import scipy.stats

INTERVAL_METHODS = ("t", "bca", "percentile")


@dataclasses.dataclass(frozen=True)
class Interval:
    """A confidence interval ``[low, high]`` at ``confidence``, made by ``method``."""

    low: float
    high: float
    confidence: float
    method: str


@dataclasses.dataclass(frozen=True)
class CellSummary:
    """One cell's figure over its seeds: mean, sample standard deviation (ddof 1), count and
    the mean's interval (both NaN with a single seed)."""

    mean: float
    std: float
    n: int
    interval: Interval


def seed_values(values: Sequence[float] | np.ndarray, name: str = "values") -> np.ndarray:
    """``values`` as a float ``[seeds]`` array; raises ValueError naming ``name`` when it is not
    one-dimensional, empty or not finite."""
    array = np.asarray(values, dtype=np.float64)
    if array.ndim != 1 or array.size == 0:
        raise ValueError(f"{name}: expected one value per seed, shape [seeds]; got {array.shape}")
    if not np.all(np.isfinite(array)):
        raise ValueError(f"{name}: not every value is finite: {array.tolist()}")
    return array


def score_matrix(
    scores: Sequence[Sequence[float]] | np.ndarray,
    name: str = "scores",
    *,
    tasks: int | None = None,
) -> np.ndarray:
    """``scores`` as a float ``[seeds, tasks]`` array; raises ValueError naming ``name`` when it
    is not two-dimensional, is empty, is not finite or has other than ``tasks`` columns."""
    array = np.asarray(scores, dtype=np.float64)
    if array.ndim != 2 or array.size == 0:
        raise ValueError(f"{name}: expected shape [seeds, tasks]; got {array.shape}")
    if tasks is not None and array.shape[1] != tasks:
        raise ValueError(
            f"{name}: {array.shape[1]} tasks (columns) where the other cells have {tasks}; "
            f"shape {array.shape} must be [seeds, tasks]"
        )
    if not np.all(np.isfinite(array)):
        raise ValueError(f"{name}: not every score is finite")
    return array


def mean_interval(
    values: Sequence[float] | np.ndarray,
    *,
    confidence: float = 0.95,
    method: str = "t",
    resamples: int = 9999,
    seed: int = 0,
) -> Interval:
    """The interval of the mean of ``values`` ``[seeds]``.

    ``method``: ``"t"`` (Student t with ``seeds - 1`` degrees of freedom), ``"bca"`` or
    ``"percentile"`` (``scipy.stats.bootstrap``, ``resamples`` resamples from ``seed``). One
    seed gives ``[nan, nan]``; equal values give a zero-width interval.
    """
    array = seed_values(values)
    if method not in INTERVAL_METHODS:
        raise ValueError(f"unknown interval method {method!r}; choose from {INTERVAL_METHODS}")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1); got {confidence}")
    mean = float(array.mean())
    if array.size == 1:
        return Interval(float("nan"), float("nan"), confidence, method)
    if np.all(array == array[0]):
        return Interval(mean, mean, confidence, method)
    if method == "t":
        half = scipy.stats.t.ppf(0.5 + confidence / 2, array.size - 1) * scipy.stats.sem(array)
        return Interval(mean - float(half), mean + float(half), confidence, method)
    result = scipy.stats.bootstrap(
        (array,),
        np.mean,
        confidence_level=confidence,
        n_resamples=resamples,
        method="BCa" if method == "bca" else "percentile",
        rng=np.random.default_rng(seed),
    )
    low, high = result.confidence_interval
    return Interval(float(low), float(high), confidence, method)


def summarize(
    values: Sequence[float] | np.ndarray, *, confidence: float = 0.95, method: str = "t"
) -> CellSummary:
    """Mean, standard deviation (ddof 1; NaN for one seed), count and interval of ``values``
    ``[seeds]``."""
    array = seed_values(values)
    std = float(array.std(ddof=1)) if array.size > 1 else float("nan")
    interval = mean_interval(array, confidence=confidence, method=method)
    return CellSummary(float(array.mean()), std, int(array.size), interval)


def interquartile_mean(scores: Sequence[Sequence[float]] | np.ndarray) -> float:
    """The mean of the middle 50% of every (seed, task) score of ``scores`` ``[seeds, tasks]``
    (25% cut from each end; ``scipy.stats.trim_mean``)."""
    return float(scipy.stats.trim_mean(score_matrix(scores).ravel(), 0.25))


def probability_of_improvement(
    x: Sequence[Sequence[float]] | np.ndarray, y: Sequence[Sequence[float]] | np.ndarray
) -> float:
    """P(X > Y): for each task, the chance that a run of ``x`` scores above a run of ``y``
    (ties count one half; the Mann-Whitney U over all pairs of runs, divided by their number),
    averaged over tasks. ``x`` ``[seeds_x, tasks]``, ``y`` ``[seeds_y, tasks]``."""
    x = score_matrix(x, "x")
    y = score_matrix(y, "y", tasks=x.shape[1])
    greater = x[:, None, :] > y[None, :, :]  # [seeds_x, seeds_y, tasks]
    equal = x[:, None, :] == y[None, :, :]
    return float(np.mean(greater + 0.5 * equal))


def stratified_bootstrap_interval(
    statistic: Callable[..., float],
    *cells: Sequence[Sequence[float]] | np.ndarray,
    confidence: float = 0.95,
    resamples: int = 2000,
    seed: int = 0,
) -> Interval:
    """A percentile interval of ``statistic(*cells)`` under the stratified bootstrap: each
    resample draws, for every cell and every task separately, that task's seeds with
    replacement (so every task keeps its runs and the cells stay independent).

    Args:
      statistic: ``f(*[seeds, tasks] arrays) -> float`` (``interquartile_mean``,
        ``probability_of_improvement``).
      cells: ``[seeds, tasks]`` score arrays with the same tasks.
    """
    if not cells:
        raise ValueError("stratified_bootstrap_interval: no cells given")
    arrays = [score_matrix(cells[0], "cells[0]")]
    arrays += [
        score_matrix(c, f"cells[{i}]", tasks=arrays[0].shape[1]) for i, c in enumerate(cells[1:], 1)
    ]
    rng = np.random.default_rng(seed)
    values = np.empty(resamples)
    for r in range(resamples):
        drawn = []
        for array in arrays:
            seeds, tasks = array.shape
            rows = rng.integers(0, seeds, size=(seeds, tasks))  # per task, its own draws
            drawn.append(np.take_along_axis(array, rows, axis=0))
        values[r] = statistic(*drawn)
    tail = 100 * (1 - confidence) / 2
    low, high = np.percentile(values, [tail, 100 - tail])
    return Interval(float(low), float(high), confidence, "stratified bootstrap, percentile")
