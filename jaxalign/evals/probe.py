"""Frozen-feature evaluations of any encoder: weighted k-NN and a linear (logistic) probe.

Both read host NumPy features (e.g. from :func:`jaxalign.evals.embed_dataset`) and labels, and
never train the encoder. Each docstring states the protocol completely, so a figure can be
reproduced from it: :func:`knn_accuracy` is the weighted k-NN of Wu et al. (2018, "Unsupervised
Feature Learning via Non-Parametric Instance Discrimination") as used by DINO (Caron et al.,
2021); :func:`linear_probe` is multinomial logistic regression whose regularisation is chosen by
cross-validation on the training split only, so no test label ever steers model selection.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from typing import Any

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold


def _as_features(x: Any, name: str) -> np.ndarray:
    """``[n, dim]`` float64, non-empty and finite, or a ValueError naming ``name``."""
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] == 0:
        raise ValueError(f"{name} must be [n, dim] with n >= 1, got shape {x.shape}")
    if not np.all(np.isfinite(x)):
        raise ValueError(f"{name} holds {int(np.sum(~np.isfinite(x)))} non-finite values")
    return x


def _as_labels(y: Any, n: int, limit: int | None, name: str) -> np.ndarray:
    """``[n]`` int64 in ``[0, limit)`` (``[0, inf)`` when ``limit`` is None), or a ValueError."""
    y = np.asarray(y)
    if y.shape != (n,) or not np.issubdtype(y.dtype, np.integer):
        raise ValueError(f"{name} must be [{n}] integers, got shape {y.shape} dtype {y.dtype}")
    if y.min() < 0 or (limit is not None and y.max() >= limit):
        bound = f"[0, {limit})" if limit is not None else ">= 0"
        raise ValueError(f"{name} must lie in {bound}, got values in [{y.min()}, {y.max()}]")
    return y.astype(np.int64)


def _check_split(
    train_features: Any, train_labels: Any, test_features: Any, test_labels: Any, limit: int | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    x_train = _as_features(train_features, "train_features")
    x_test = _as_features(test_features, "test_features")
    if x_train.shape[1] != x_test.shape[1]:
        raise ValueError(
            f"train_features {x_train.shape} and test_features {x_test.shape} differ in dim"
        )
    y_train = _as_labels(train_labels, x_train.shape[0], limit, "train_labels")
    y_test = _as_labels(test_labels, x_test.shape[0], limit, "test_labels")
    return x_train, y_train, x_test, y_test


def _positive_int(value: Any, name: str, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")
    return int(value)


def _knn_votes(
    queries: np.ndarray,
    train: np.ndarray,
    train_labels: np.ndarray,
    num_classes: int,
    k: int,
    temperature: float,
) -> np.ndarray:
    """``[b, d] x [n, d]`` unit rows -> ``[b, num_classes]`` summed neighbour weights."""
    sims = queries @ train.T  # [b, n]
    b, n = sims.shape
    if k < n:
        idx = np.argpartition(-sims, k - 1, axis=1)[:, :k]  # [b, k], some k most similar
        kth = np.take_along_axis(sims, idx, axis=1).min(axis=1, keepdims=True)
        for row in np.flatnonzero(np.sum(sims >= kth, axis=1) > k):  # ties across the cut
            idx[row] = np.argsort(-sims[row], kind="stable")[:k]  # lower train index first
        idx = np.sort(idx, axis=1)  # sum votes in train-index order: deterministic rounding
    else:
        idx = np.broadcast_to(np.arange(n), (b, n))
    near = np.take_along_axis(sims, idx, axis=1)  # [b, k]
    # exp(sim / T), scaled per row by exp(-max / T) to avoid overflow; argmax is unchanged.
    weights = np.exp((near - near.max(axis=1, keepdims=True)) / temperature)
    cells = np.arange(b)[:, None] * num_classes + train_labels[idx]  # [b, k]
    votes = np.bincount(cells.ravel(), weights.ravel(), minlength=b * num_classes)
    return votes.reshape(b, num_classes)


def knn_accuracy(
    train_features: Any,
    train_labels: Any,
    test_features: Any,
    test_labels: Any,
    *,
    num_classes: int,
    k: int = 20,
    temperature: float = 0.07,
    block_size: int = 1024,
) -> dict[str, float]:
    """Weighted k-nearest-neighbour accuracy (Wu et al. 2018; DINO, Caron et al. 2021).

    Protocol: every row is L2-normalised (a zero row stays zero); a test row's ``k`` most
    cosine-similar training rows each vote for their label with weight ``exp(sim / temperature)``;
    the prediction is the class with the largest summed vote. ``k > n_train`` uses every row.

    Ties, all deterministic: training rows tied at the k-th similarity are taken in order of
    lower training index; classes are ranked by summed vote, a tie going to the lower class
    index (so the top-1 prediction is ``argmax`` with its first maximum). Votes of each row are
    summed in training-index order, so ``block_size`` changes nothing but the rounding of the
    similarity products.

    Args:
      train_features: ``[n_train, dim]`` features.
      train_labels: ``[n_train]`` ints in ``[0, num_classes)``.
      test_features: ``[n_test, dim]`` features, same ``dim``.
      test_labels: ``[n_test]`` ints in ``[0, num_classes)``.
      num_classes: ``C``, the number of classes.
      k: neighbours per test row (``>= 1``).
      temperature: vote temperature (``> 0``).
      block_size: test rows scored at once; memory is ``O(block_size * n_train)`` (float64
        similarities and int64 indices, about ``24 * block_size * n_train`` bytes).

    Returns:
      ``{"knn_top1": ..., "knn_top5": ...}``: the fraction of test rows whose class ranks first
      (among the first five). ``knn_top5`` is left out when ``num_classes < 5``.
    """
    num_classes = _positive_int(num_classes, "num_classes")
    k = _positive_int(k, "k")
    block_size = _positive_int(block_size, "block_size")
    if isinstance(temperature, bool) or not isinstance(temperature, numbers.Real):
        raise ValueError(f"temperature must be a finite number > 0, got {temperature!r}")
    if not 0 < temperature < math.inf:
        raise ValueError(f"temperature must be a finite number > 0, got {temperature!r}")
    x_train, y_train, x_test, y_test = _check_split(
        train_features, train_labels, test_features, test_labels, num_classes
    )
    unit = lambda x: x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    x_train, x_test = unit(x_train), unit(x_test)
    k = min(k, x_train.shape[0])
    ranks = []
    for start in range(0, x_test.shape[0], block_size):
        votes = _knn_votes(
            x_test[start : start + block_size], x_train, y_train, num_classes, k, temperature
        )
        labels = y_test[start : start + block_size]
        own = votes[np.arange(labels.size), labels][:, None]  # [b, 1]
        lower = np.arange(num_classes)[None, :] < labels[:, None]
        ranks.append(np.sum((votes > own) | ((votes == own) & lower), axis=1))
    rank = np.concatenate(ranks)
    metrics = {"knn_top1": float(np.mean(rank < 1))}
    if num_classes >= 5:
        metrics["knn_top5"] = float(np.mean(rank < 5))
    return metrics


def _fit_and_score(fit: tuple, held: tuple, c: float, max_iter: int) -> float:
    """Standardise with the ``fit = (x [n, d], y [n])`` rows' own mean and std, fit logistic
    regression at ``C = c``, return its accuracy on ``held = (x [m, d], y [m])``."""
    (x_fit, y_fit), (x_eval, y_eval) = fit, held
    mean, std = x_fit.mean(axis=0), x_fit.std(axis=0)
    scale = np.where(std > 1e-12 * (1.0 + np.abs(mean)), std, 1.0)  # constant feature: centre
    model = LogisticRegression(C=c, solver="lbfgs", max_iter=max_iter)
    model.fit((x_fit - mean) / scale, y_fit)
    return float(np.mean(model.predict((x_eval - mean) / scale) == y_eval))


def linear_probe(
    train_features: Any,
    train_labels: Any,
    test_features: Any,
    test_labels: Any,
    *,
    c_grid: Sequence[float] = (1e-3, 1e-2, 1e-1, 1.0, 10.0, 100.0),
    folds: int = 5,
    seed: int = 0,
    max_iter: int = 1000,
    fixed_c: float | None = None,
) -> dict[str, float]:
    """Logistic-regression probe on frozen features, ``C`` chosen without the test split.

    Protocol: (1) split the training rows with
    ``StratifiedKFold(f, shuffle=True, random_state=seed)``, where ``f = min(folds, m)`` and
    ``m`` is the smallest per-class training count (a class with fewer than 2 rows is an
    error); (2) for each ``C`` in ``c_grid``, fit scikit-learn's ``LogisticRegression`` (lbfgs,
    L2, multinomial for more than two classes) on each fold's training part, standardised with
    that part's own mean and std, and score accuracy on the held-out part; (3) pick the ``C``
    with the best mean accuracy, the smallest such ``C`` on a tie; (4) refit on all training
    rows, standardised with the training mean and std, and report accuracy on the test rows.
    Test labels are read only in step (4). With ``fixed_c`` steps (1)-(3) are skipped. A feature
    constant over the fitting rows is only centred. A test class absent from training can never be
    predicted and counts as an error. The result is deterministic for a given ``seed``.

    Args:
      train_features: ``[n_train, dim]`` features.
      train_labels: ``[n_train]`` ints ``>= 0``, at least two classes, each at least twice
        (once with ``fixed_c``).
      test_features: ``[n_test, dim]`` features, same ``dim``.
      test_labels: ``[n_test]`` ints ``>= 0``.
      c_grid: candidate inverse regularisation strengths (each finite and ``> 0``).
      folds: cross-validation folds (``>= 2``), lowered to the smallest class count.
      seed: seeds the fold split.
      max_iter: lbfgs iterations per fit.
      fixed_c: when given, ``C`` itself: steps (1)-(3) are skipped (``probe_cv_top1`` is NaN),
        so one row per class suffices (a one-shot probe has no row to choose ``C`` on).

    Returns:
      ``{"probe_top1": test accuracy, "probe_cv_top1": best mean CV accuracy, "probe_c": C}``.
    """
    grid = sorted({float(c) for c in c_grid})
    if not grid or not all(math.isfinite(c) and c > 0 for c in grid):
        raise ValueError(f"c_grid must hold finite values > 0, got {tuple(c_grid)!r}")
    folds = _positive_int(folds, "folds", minimum=2)
    max_iter = _positive_int(max_iter, "max_iter")
    seed = _positive_int(seed, "seed", minimum=0)
    x_train, y_train, x_test, y_test = _check_split(
        train_features, train_labels, test_features, test_labels, None
    )
    classes, counts = np.unique(y_train, return_counts=True)
    if classes.size < 2:
        raise ValueError(f"train_labels must hold at least 2 classes, got {classes.tolist()}")
    if fixed_c is not None:
        if not (isinstance(fixed_c, numbers.Real) and 0 < fixed_c < math.inf):
            raise ValueError(f"fixed_c must be a finite number > 0, got {fixed_c!r}")
        top1 = _fit_and_score((x_train, y_train), (x_test, y_test), float(fixed_c), max_iter)
        return {"probe_top1": top1, "probe_cv_top1": math.nan, "probe_c": float(fixed_c)}
    if counts.min() < 2:
        rare = int(classes[np.argmin(counts)])
        raise ValueError(
            f"train_labels has class {rare} only once; cross-validation needs 2 rows per class"
        )
    splitter = StratifiedKFold(min(folds, int(counts.min())), shuffle=True, random_state=seed)
    splits = list(splitter.split(x_train, y_train))
    best_c, best_cv = grid[0], -1.0
    for c in grid:  # ascending: strictly better replaces, so a tie keeps the smaller C
        scores = [
            _fit_and_score((x_train[a], y_train[a]), (x_train[b], y_train[b]), c, max_iter)
            for a, b in splits
        ]
        cv = float(np.mean(scores))
        if cv > best_cv:
            best_c, best_cv = c, cv
    top1 = _fit_and_score((x_train, y_train), (x_test, y_test), best_c, max_iter)
    return {"probe_top1": top1, "probe_cv_top1": best_cv, "probe_c": best_c}


def few_shot_indices(labels: Any, shots: int, seed: int) -> np.ndarray:
    """Indices of ``shots`` rows of each class of ``labels`` (``[n]`` ints), increasing.

    Class ``c``'s rows are ordered by a permutation drawn from
    ``np.random.default_rng([seed, c])`` and the first ``shots`` taken: the choice depends only
    on ``(seed, c)`` and that class's rows, and for one seed a smaller ``shots`` picks a subset
    of a larger one's. A class with fewer than ``shots`` rows is a ValueError naming it.
    """
    shots = _positive_int(shots, "shots")
    seed = _positive_int(seed, "seed", minimum=0)
    labels = np.asarray(labels)
    chosen = []
    for c in np.unique(labels):
        rows = np.flatnonzero(labels == c)
        if rows.size < shots:
            raise ValueError(f"class {int(c)} has {rows.size} rows, fewer than shots={shots}")
        order = np.random.default_rng([seed, int(c)]).permutation(rows.size)
        chosen.append(rows[order[:shots]])
    return np.sort(np.concatenate(chosen))


def probe_suite(
    train_features: Any,
    train_labels: Any,
    test_features: Any,
    test_labels: Any,
    *,
    num_classes: int,
    shots: Sequence[int] = (1, 5, 10, 25),
    trials: int = 3,
    seed: int = 0,
    knn_k: int = 20,
    knn_temperature: float = 0.07,
    few_shot_c: float = 1.0,
) -> dict[str, float]:
    """The frozen-feature evals of ``docs/results/self_supervised.md``, in one call.

    Protocol: :func:`linear_probe` (``C`` by 5-fold cross-validation on the training rows) and
    :func:`knn_accuracy` (``knn_k`` neighbours, cosine, ``exp(sim / knn_temperature)`` votes)
    with every training row; then for each ``k`` in ``shots``, ``trials`` draws of ``k`` rows
    per class (:func:`few_shot_indices` with seed ``seed + t`` for trial ``t``), each scored
    by both on the whole test set, the figures averaged over the draws. The probe's ``C`` is
    cross-validated over ``min(5, k)`` folds when ``k >= 2``, and fixed at ``few_shot_c`` at
    one shot (no row left to choose it on). Features: ``[n, dim]``; labels ``[n]`` ints.

    Returns:
      ``{"linear_top1", "knn_top1", "<k>shot/linear_top1", "<k>shot/knn_top1",
      "<k>shot/linear_top1_std", "<k>shot/knn_top1_std"}`` (std over the draws, ``ddof=0``).
    """
    trials = _positive_int(trials, "trials")
    x_train, y_train = _as_features(train_features, "train_features"), np.asarray(train_labels)
    x_test, y_test = _as_features(test_features, "test_features"), np.asarray(test_labels)

    def scores(rows: np.ndarray | slice, fixed_c: float | None) -> dict[str, float]:
        linear = linear_probe(
            x_train[rows], y_train[rows], x_test, y_test, seed=seed, fixed_c=fixed_c
        )
        knn = knn_accuracy(
            x_train[rows],
            y_train[rows],
            x_test,
            y_test,
            num_classes=num_classes,
            k=knn_k,
            temperature=knn_temperature,
        )
        return {"linear_top1": linear["probe_top1"], "knn_top1": knn["knn_top1"]}

    results = scores(slice(None), None)
    for k in shots:
        draws = [
            scores(few_shot_indices(y_train, k, seed + t), None if k >= 2 else few_shot_c)
            for t in range(trials)
        ]
        for name in ("linear_top1", "knn_top1"):
            values = np.array([d[name] for d in draws])
            results[f"{k}shot/{name}"] = float(values.mean())
            results[f"{k}shot/{name}_std"] = float(values.std())
    return results
