"""The report's statistics: intervals over seeds (with a coverage simulation that shows why the
default is a t interval), the rliable statistics against their published definitions, the
stratified bootstrap, and shape checks that keep seeds and cells apart."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.stats

from jaxalign.studies import statistics as st


def test_t_interval_is_students():
    values = np.array([0.81, 0.86, 0.84, 0.90, 0.79])
    interval = st.mean_interval(values)
    half = scipy.stats.t.ppf(0.975, df=4) * values.std(ddof=1) / np.sqrt(5)
    assert interval.low == pytest.approx(values.mean() - half)
    assert interval.high == pytest.approx(values.mean() + half)
    summary = st.summarize(values)
    assert (summary.n, summary.mean) == (5, pytest.approx(values.mean()))
    assert summary.std == pytest.approx(values.std(ddof=1))


def test_one_seed_and_equal_seeds():
    assert np.isnan(st.mean_interval([0.5]).low) and np.isnan(st.summarize([0.5]).std)
    interval = st.mean_interval([0.5, 0.5, 0.5], method="bca")
    assert (interval.low, interval.high) == (0.5, 0.5)


def _coverage(method, seeds, trials, rng):
    """How often the interval of ``seeds`` draws from N(0.7, 0.05^2) holds 0.7."""
    hits = 0
    for _ in range(trials):
        values = rng.normal(0.7, 0.05, size=seeds)
        interval = st.mean_interval(
            values, method=method, resamples=1000, seed=int(rng.integers(1 << 30))
        )
        hits += interval.low <= 0.7 <= interval.high
    return hits / trials


def test_coverage_with_few_seeds_favours_the_t_interval():
    """400 simulated studies per method (standard error of a coverage ~0.01-0.02): with 3 seeds
    the t interval holds the true mean about 95% of the time, the bootstrap ones far less."""
    rng = np.random.default_rng(0)
    coverage = {m: _coverage(m, 3, 400, rng) for m in st.INTERVAL_METHODS}
    assert 0.92 <= coverage["t"] <= 0.98, coverage
    assert coverage["percentile"] < 0.85, coverage
    assert coverage["bca"] < 0.88, coverage
    five = {m: _coverage(m, 5, 400, rng) for m in ("t", "percentile")}
    assert 0.92 <= five["t"] <= 0.98 and five["percentile"] < 0.9, five


def test_interquartile_mean_is_the_middle_half():
    scores = np.arange(16, dtype=float).reshape(8, 2)  # 16 runs x tasks: middle 8 are 4..11
    assert st.interquartile_mean(scores) == pytest.approx(np.mean(np.arange(4, 12)))


def test_probability_of_improvement_by_its_definition():
    # Task 0: x beats y in 3 of 4 pairs; task 1: every pair ties (1/2 each).
    x = np.array([[2.0, 1.0], [4.0, 1.0]])
    y = np.array([[3.0, 1.0], [1.0, 1.0]])
    assert st.probability_of_improvement(x, y) == pytest.approx((3 / 4 + 1 / 2) / 2)
    assert st.probability_of_improvement(x, x) == pytest.approx(0.5)
    # Another seed count on one side: all pairs of runs, per task.
    assert st.probability_of_improvement([[1.0], [2.0], [3.0]], [[2.0]]) == pytest.approx(0.5)


def test_stratified_bootstrap_keeps_each_tasks_runs():
    # Each task's runs are all equal, so every resample gives the same IQM: a point interval.
    scores = np.tile([[0.2, 0.5, 0.9]], (4, 1))
    interval = st.stratified_bootstrap_interval(st.interquartile_mean, scores, resamples=200)
    assert interval.low == interval.high == pytest.approx(st.interquartile_mean(scores))
    rng = np.random.default_rng(1)
    better, worse = rng.normal(1.0, 0.1, (5, 3)), rng.normal(0.0, 0.1, (5, 3))
    interval = st.stratified_bootstrap_interval(
        st.probability_of_improvement, better, worse, resamples=200
    )
    assert interval.low == interval.high == 1.0
    noisy = st.stratified_bootstrap_interval(st.interquartile_mean, better, resamples=500)
    assert noisy.low < st.interquartile_mean(better) < noisy.high


def test_shapes_are_checked():
    with pytest.raises(ValueError, match=r"values: expected one value per seed, shape \[seeds\]"):
        st.mean_interval([[0.1, 0.2]])
    with pytest.raises(ValueError, match=r"y: 2 tasks \(columns\) where the other cells have 3"):
        st.probability_of_improvement(np.zeros((5, 3)), np.zeros((3, 2)))
    with pytest.raises(ValueError, match=r"cells\[1\]: 5 tasks"):
        st.stratified_bootstrap_interval(st.interquartile_mean, np.zeros((5, 3)), np.zeros((3, 5)))
    with pytest.raises(ValueError, match="not every value is finite"):
        st.summarize([0.1, float("nan")])
    with pytest.raises(ValueError, match="unknown interval method 'bootstrap'"):
        st.mean_interval([0.1, 0.2], method="bootstrap")
