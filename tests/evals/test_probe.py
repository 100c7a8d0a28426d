"""Frozen-feature probes: weighted k-NN against a plain per-row reference (random data, exact
ties, blocks), known answers on clusters and random labels; the linear probe's accuracy on
separable and random data, selection that never reads test labels, determinism, fold rules;
and argument errors that name the argument."""

import numpy as np
import pytest

from jaxalign.evals import knn_accuracy, linear_probe
from jaxalign.evals import probe as probe_lib


def _reference_knn(train_x, train_y, test_x, test_y, num_classes, k, temperature):
    """One test row at a time: neighbours by (similarity desc, train index asc), votes summed
    in train-index order, classes ranked by (vote desc, class index asc)."""
    train = train_x / np.linalg.norm(train_x, axis=1, keepdims=True)
    hits1, hits5 = [], []
    for x, y in zip(test_x, test_y, strict=True):
        sims = train @ (x / np.linalg.norm(x))
        order = np.lexsort((np.arange(len(train)), -sims))[:k]
        votes = np.zeros(num_classes)
        for j in sorted(order):
            votes[train_y[j]] += np.exp(sims[j] / temperature)
        ranking = np.lexsort((np.arange(num_classes), -votes))
        hits1.append(ranking[0] == y)
        hits5.append(y in ranking[:5])
    out = {"knn_top1": float(np.mean(hits1))}
    if num_classes >= 5:
        out["knn_top5"] = float(np.mean(hits5))
    return out


@pytest.mark.parametrize(
    "n_train, n_test, num_classes, k, temperature, block",
    [
        (60, 37, 6, 5, 0.07, 8),  # block smaller than, and not dividing, n_test
        (60, 37, 6, 1, 0.5, 1),
        (40, 25, 10, 20, 0.07, 1024),
        (12, 30, 5, 50, 5.0, 7),  # k > n_train: every training row votes
        (80, 50, 3, 7, 1.0, 16),  # no top-5 for 3 classes
    ],
)
def test_knn_matches_brute_force_reference(n_train, n_test, num_classes, k, temperature, block):
    rng = np.random.default_rng([n_train, n_test, k])
    train_x, test_x = rng.normal(size=(n_train, 8)), rng.normal(size=(n_test, 8))
    train_y = rng.integers(0, num_classes, n_train)
    test_y = rng.integers(0, num_classes, n_test)
    got = knn_accuracy(
        train_x,
        train_y,
        test_x,
        test_y,
        num_classes=num_classes,
        k=k,
        temperature=temperature,
        block_size=block,
    )
    want = _reference_knn(train_x, train_y, test_x, test_y, num_classes, k, temperature)
    assert got == want
    assert 0 < got["knn_top1"] < 1  # a non-trivial figure, so the comparison can fail


@pytest.mark.parametrize("k", [1, 3, 5, 9])
def test_knn_neighbour_ties_match_reference(k):
    # Every training row appears twice with different labels: odd k cuts between the copies of
    # a pair, where only the lower training index may be kept.
    rng = np.random.default_rng(k)
    base = rng.normal(size=(25, 6))
    train_x = np.concatenate([base, base])
    train_y = rng.integers(0, 7, 50)
    test_x, test_y = rng.normal(size=(40, 6)), rng.integers(0, 7, 40)
    for block in (3, 40):
        got = knn_accuracy(train_x, train_y, test_x, test_y, num_classes=7, k=k, block_size=block)
        assert got == _reference_knn(train_x, train_y, test_x, test_y, 7, k, 0.07)


def test_knn_tie_rules_on_a_hand_made_case():
    train_x = np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    train_y = np.array([1, 0, 2])
    test_x = np.array([[2.0, 0.0]])
    # k=1: rows 0 and 1 tie; the lower training index (row 0, class 1) is the neighbour.
    assert knn_accuracy(train_x, train_y, test_x, [1], num_classes=3, k=1)["knn_top1"] == 1.0
    assert knn_accuracy(train_x, train_y, test_x, [0], num_classes=3, k=1)["knn_top1"] == 0.0
    # k=2: classes 0 and 1 tie on votes; the lower class index (0) wins.
    assert knn_accuracy(train_x, train_y, test_x, [0], num_classes=3, k=2)["knn_top1"] == 1.0
    assert knn_accuracy(train_x, train_y, test_x, [1], num_classes=3, k=2)["knn_top1"] == 0.0
    # k > n_train: all three rows vote. At temperature 100 class 0 gets 2 * exp(0) and class 1
    # exp(0.01); with one row fewer, class 1 would win.
    far, labels = np.array([[0.0, 1.0]]), np.array([0, 0, 1])
    assert knn_accuracy(train_x, labels, far, [1], num_classes=3, k=1)["knn_top1"] == 1.0
    for k in (3, 100):
        got = knn_accuracy(train_x, labels, far, [0], num_classes=3, k=k, temperature=100.0)
        assert got["knn_top1"] == 1.0


def test_knn_separated_clusters_are_perfect_and_random_labels_near_chance():
    rng = np.random.default_rng(0)
    centers = rng.normal(size=(8, 16))
    train_y, test_y = rng.integers(0, 8, 400), rng.integers(0, 8, 200)
    train_x = centers[train_y] + 0.05 * rng.normal(size=(400, 16))
    test_x = centers[test_y] + 0.05 * rng.normal(size=(200, 16))
    clean = knn_accuracy(train_x, train_y, test_x, test_y, num_classes=8, block_size=64)
    assert clean == {"knn_top1": 1.0, "knn_top5": 1.0}
    noise = knn_accuracy(
        train_x, rng.permutation(train_y), test_x, test_y, num_classes=8, block_size=64
    )
    assert 0.05 < noise["knn_top1"] < 0.25  # chance is 1/8
    assert 0.45 < noise["knn_top5"] < 0.80  # chance is 5/8


def test_knn_scores_at_most_block_size_rows_at_once(monkeypatch):
    rows = []
    original = probe_lib._knn_votes

    def spy(queries, *args):
        rows.append(queries.shape[0])
        return original(queries, *args)

    monkeypatch.setattr(probe_lib, "_knn_votes", spy)
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=(70, 4)), rng.integers(0, 5, 70)
    knn_accuracy(x, y, x, y, num_classes=5, block_size=16)
    assert rows == [16, 16, 16, 16, 6]


def _clusters(rng, n, num_classes, dim, spread):
    centers = 3.0 * np.eye(num_classes, dim)
    y = np.arange(n) % num_classes
    return centers[y] + spread * rng.normal(size=(n, dim)), y


def test_linear_probe_separable_data_and_random_labels():
    rng = np.random.default_rng(0)
    train_x, train_y = _clusters(rng, 300, 4, 10, 0.5)
    test_x, test_y = _clusters(rng, 300, 4, 10, 0.5)
    # Feature scales far from 1 are standardised away.
    scale, shift = np.geomspace(1e-3, 1e3, 10), np.linspace(-50, 50, 10)
    got = linear_probe(train_x * scale + shift, train_y, test_x * scale + shift, test_y)
    assert got["probe_top1"] >= 0.95 and got["probe_cv_top1"] >= 0.95
    assert got["probe_c"] in (1e-3, 1e-2, 1e-1, 1.0, 10.0, 100.0)
    noise_x, test_noise = rng.normal(size=(300, 10)), rng.normal(size=(300, 10))
    noise = linear_probe(noise_x, rng.permutation(train_y), test_noise, test_y)
    assert 0.12 < noise["probe_top1"] < 0.38 and 0.12 < noise["probe_cv_top1"] < 0.38


def test_linear_probe_takes_the_smallest_c_among_equal_cv_scores():
    rng = np.random.default_rng(4)
    train_x, train_y = _clusters(rng, 60, 3, 4, 0.05)
    # Every C separates these clusters perfectly; the strongest regularisation must be kept.
    got = linear_probe(train_x, train_y, train_x, train_y, c_grid=(10.0, 1e-3, 1.0))
    assert got == {"probe_top1": 1.0, "probe_cv_top1": 1.0, "probe_c": 1e-3}


def test_linear_probe_selection_never_reads_test_labels(monkeypatch):
    rng = np.random.default_rng(1)
    train_x, train_y = _clusters(rng, 120, 3, 6, 1.5)
    test_x, test_y = _clusters(rng, 120, 3, 6, 1.5)
    grid = (1e-3, 1e-2, 1.0)
    calls = []
    original = probe_lib._fit_and_score

    def spy(fit, held, c, max_iter):
        calls.append((len(fit[1]), len(held[1])))
        return original(fit, held, c, max_iter)

    monkeypatch.setattr(probe_lib, "_fit_and_score", spy)
    real = linear_probe(train_x, train_y, test_x, test_y, c_grid=grid, folds=4)
    shuffled = linear_probe(train_x, train_y, test_x, rng.permutation(test_y), c_grid=grid, folds=4)
    assert shuffled["probe_c"] == real["probe_c"]
    assert shuffled["probe_cv_top1"] == real["probe_cv_top1"]
    assert shuffled["probe_top1"] < real["probe_top1"] - 0.2  # the test labels did change
    # Per call: 3 C x 4 folds on train rows only (90 fit, 30 held), then one refit -> test.
    assert calls == ([(90, 30)] * 12 + [(120, 120)]) * 2


def test_linear_probe_is_deterministic_per_seed():
    rng = np.random.default_rng(2)
    train_x, train_y = _clusters(rng, 90, 3, 5, 2.0)
    test_x, test_y = _clusters(rng, 60, 3, 5, 2.0)
    runs = [linear_probe(train_x, train_y, test_x, test_y, seed=s) for s in (0, 0, 7)]
    assert runs[0] == runs[1]
    assert runs[2]["probe_cv_top1"] != runs[0]["probe_cv_top1"]  # the seed moves the folds


def test_linear_probe_lowers_folds_to_the_smallest_class(monkeypatch):
    splits = []
    original = probe_lib.StratifiedKFold

    def spy(n_splits, **kwargs):
        splits.append(n_splits)
        return original(n_splits, **kwargs)

    monkeypatch.setattr(probe_lib, "StratifiedKFold", spy)
    rng = np.random.default_rng(3)
    y = np.array([0] * 10 + [1] * 10 + [2] * 3)
    x = rng.normal(size=(23, 4)) + y[:, None]
    linear_probe(x, y, x, y, c_grid=(1.0,), folds=5)
    linear_probe(x[:20], y[:20], x, y, c_grid=(1.0,), folds=5)
    assert splits == [3, 5]
    with pytest.raises(ValueError, match="train_labels has class 2 only once"):
        linear_probe(x[:21], y[:21], x, y)
    with pytest.raises(ValueError, match="at least 2 classes"):
        linear_probe(x[:10], y[:10], x, y)


_X, _Y = np.eye(6, 3), np.array([0, 1, 2, 0, 1, 2])


@pytest.mark.parametrize(
    "change, message",
    [
        (dict(train_labels=_Y[:5]), r"train_labels must be \[6\] integers, got shape \(5,\)"),
        (dict(test_labels=_Y[:, None]), r"test_labels must be \[6\] integers, got shape \(6, 1\)"),
        (dict(train_labels=_Y.astype(float)), "train_labels .* dtype float64"),
        (dict(train_features=_X[:, 0]), r"train_features must be \[n, dim\].*shape \(6,\)"),
        (dict(test_features=np.eye(6, 4)), r"and test_features \(6, 4\) differ in dim"),
        (dict(test_features=np.full((6, 3), np.nan)), "test_features holds 18 non-finite"),
        (dict(test_labels=_Y - 1), r"test_labels must lie in .*\[-1, 1\]"),
    ],
)
@pytest.mark.parametrize("fn", ["knn", "probe"])
def test_bad_inputs_are_named(fn, change, message):
    args = dict(train_features=_X, train_labels=_Y, test_features=_X, test_labels=_Y)
    args.update(change)
    with pytest.raises(ValueError, match=message):
        if fn == "knn":
            knn_accuracy(**args, num_classes=3)
        else:
            linear_probe(**args, c_grid=(1.0,), folds=2)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(num_classes=2), r"train_labels must lie in \[0, 2\), got values in \[0, 2\]"),
        (dict(num_classes=3, k=0), "k must be an int >= 1, got 0"),
        (dict(num_classes=3, temperature=0.0), "temperature must be a finite number > 0"),
        (dict(num_classes=3, temperature=float("inf")), "temperature must be a finite"),
        (dict(num_classes=3, block_size=0), "block_size must be an int >= 1"),
        (dict(num_classes=0), "num_classes must be an int >= 1"),
    ],
)
def test_bad_knn_options_are_named(kwargs, message):
    with pytest.raises(ValueError, match=message):
        knn_accuracy(_X, _Y, _X, _Y, **kwargs)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(c_grid=()), "c_grid must hold finite values > 0"),
        (dict(c_grid=(1.0, -1.0)), "c_grid must hold finite values > 0"),
        (dict(folds=1), "folds must be an int >= 2, got 1"),
        (dict(max_iter=0), "max_iter must be an int >= 1"),
        (dict(seed=-1), "seed must be an int >= 0"),
    ],
)
def test_bad_probe_options_are_named(kwargs, message):
    with pytest.raises(ValueError, match=message):
        linear_probe(_X, _Y, _X, _Y, **kwargs)


def test_few_shot_indices_are_per_class_nested_and_deterministic():
    labels = np.repeat(np.arange(4), [7, 5, 9, 6])
    five = probe_lib.few_shot_indices(labels, 5, seed=3)
    assert np.array_equal(np.bincount(labels[five]), [5, 5, 5, 5])
    assert np.all(np.diff(five) > 0)  # increasing, no repeat
    two = probe_lib.few_shot_indices(labels, 2, seed=3)
    assert set(two) <= set(five)  # a smaller draw is part of a larger one
    assert np.array_equal(probe_lib.few_shot_indices(labels, 5, seed=3), five)
    assert not np.array_equal(probe_lib.few_shot_indices(labels, 5, seed=4), five)
    with pytest.raises(ValueError, match="class 1 has 5 rows, fewer than shots=6"):
        probe_lib.few_shot_indices(labels, 6, seed=0)


def test_one_shot_probe_uses_the_fixed_c_and_no_cross_validation():
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(3, 8)) * 4
    train_y, test_y = np.arange(3), np.repeat(np.arange(3), 10)
    train_x = centres[train_y] + rng.normal(size=(3, 8)) * 0.1
    test_x = centres[test_y] + rng.normal(size=(30, 8)) * 0.1
    out = linear_probe(train_x, train_y, test_x, test_y, fixed_c=0.5)
    assert out["probe_c"] == 0.5 and np.isnan(out["probe_cv_top1"])
    assert out["probe_top1"] == 1.0
    with pytest.raises(ValueError, match="only once"):  # cross-validation needs 2 rows
        linear_probe(train_x, train_y, test_x, test_y, c_grid=(0.5,))


def test_probe_suite_reports_full_and_few_shot_figures():
    rng = np.random.default_rng(1)
    centres = rng.normal(size=(4, 6)) * 3
    train_y, test_y = np.repeat(np.arange(4), 12), np.repeat(np.arange(4), 5)
    train_x = centres[train_y] + rng.normal(size=(48, 6))
    test_x = centres[test_y] + rng.normal(size=(20, 6))
    out = probe_lib.probe_suite(
        train_x, train_y, test_x, test_y, num_classes=4, shots=(1, 5), trials=2, knn_k=5
    )
    names = ["linear_top1", "knn_top1"]
    expected = names + [f"{k}shot/{n}{s}" for k in (1, 5) for n in names for s in ("", "_std")]
    assert sorted(out) == sorted(expected)
    assert out["linear_top1"] >= 0.9 and out["knn_top1"] >= 0.9  # well-separated clusters
    # A 5-shot figure is the mean of the probes on the two draws (seeds 0 and 1).
    draws = [probe_lib.few_shot_indices(train_y, 5, seed=t) for t in (0, 1)]
    knn = [
        probe_lib.knn_accuracy(train_x[d], train_y[d], test_x, test_y, num_classes=4, k=5)
        for d in draws
    ]
    assert out["5shot/knn_top1"] == pytest.approx(np.mean([k["knn_top1"] for k in knn]))
