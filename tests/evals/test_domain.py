"""Label-free validators, the proxy A-distance and model selection (``jaxalign.evals.domain``)
against hand-computed values and their published definitions."""

from __future__ import annotations

import math

import numpy as np
import pytest

from jaxalign.evals import domain

CLASSES = 4


def _one_hot(n_per_class: int) -> np.ndarray:
    return np.repeat(np.eye(CLASSES), n_per_class, axis=0)


def _random_probs(rng: np.random.Generator, n: int, sharpness: float) -> np.ndarray:
    logits = sharpness * rng.normal(size=(n, CLASSES))
    p = np.exp(logits - logits.max(axis=1, keepdims=True))
    return p / p.sum(axis=1, keepdims=True)


def test_validators_on_confident_balanced_and_uniform_predictions():
    confident, uniform = _one_hot(5), np.full((20, CLASSES), 1 / CLASSES)
    assert domain.neg_entropy(confident) == pytest.approx(0.0, abs=1e-9)
    assert domain.neg_entropy(uniform) == pytest.approx(-math.log(CLASSES))
    assert domain.info_max(confident) == pytest.approx(math.log(CLASSES))  # the maximum
    assert domain.info_max(uniform) == pytest.approx(0.0, abs=1e-9)
    # One-hot, 5 rows per class: singular values sqrt(5) each, CLASSES of them, over n = 20.
    assert domain.bnm(confident) == pytest.approx(CLASSES * math.sqrt(5) / 20)
    # Uniform: rank one, its one singular value the Frobenius norm sqrt(20 * CLASSES) / CLASSES.
    assert domain.bnm(uniform) == pytest.approx(math.sqrt(20 * CLASSES) / CLASSES / 20)
    assert domain.confidence(confident) == 1.0
    assert domain.confidence(uniform) == pytest.approx(1 / CLASSES)
    collapsed = np.tile(np.eye(CLASSES)[0], (20, 1))  # confident but not diverse
    assert domain.info_max(collapsed) == pytest.approx(0.0, abs=1e-9)
    assert domain.bnm(collapsed) < domain.bnm(confident)


def test_snd_matches_its_definition_computed_row_by_row():
    probs = _random_probs(np.random.default_rng(0), 9, 2.0)
    unit = probs / np.linalg.norm(probs, axis=1, keepdims=True)
    entropies = []
    for i in range(len(probs)):
        sims = np.array([unit[i] @ unit[j] for j in range(len(probs)) if j != i])
        weights = np.exp(sims / 0.05) / np.exp(sims / 0.05).sum()
        entropies.append(-np.sum(weights * np.log(weights)))
    assert domain.snd(probs) == pytest.approx(np.mean(entropies), rel=1e-9)


def test_validators_refuse_what_is_not_probabilities():
    with pytest.raises(ValueError, match="rows summing to 1"):
        domain.snd(np.ones((3, CLASSES)))
    with pytest.raises(ValueError, match=r"\[n >= 2, classes\]"):
        domain.bnm(np.ones(CLASSES) / CLASSES)


def test_proxy_a_distance_separable_and_identical_domains():
    rng = np.random.default_rng(0)
    source = rng.normal(size=(200, 8))
    assert domain.proxy_a_distance(source, source + 10.0) == 2.0  # a linear classifier separates
    same = domain.proxy_a_distance(source, rng.normal(size=(200, 8)))
    assert abs(same) < 0.4  # chance error, about 0.5
    with pytest.raises(ValueError, match="features"):
        domain.proxy_a_distance(source, source[:, :4])


def test_select_picks_the_best_row_per_rule_and_the_first_on_a_tie():
    rows = [
        {"step": 1, "loss": 1.0},  # a training row: ignored
        {"step": 10, "a": 0.5, "b": 1.0, "report": 0.1},
        {"step": 20, "a": 0.9, "b": 1.0, "report": 0.2},
        {"step": 30, "a": 0.7, "b": 0.0, "report": 0.3},
    ]
    chosen = domain.select(rows, {"last": "", "a": "a", "b": "b", "none": "c"}, report="report")
    assert chosen["last"] == {"step": 30, "score": None, "value": 0.3}
    assert chosen["a"] == {"step": 20, "score": 0.9, "value": 0.2}
    assert chosen["b"] == {"step": 10, "score": 1.0, "value": 0.1}  # tie: the earliest
    assert "none" not in chosen
    assert domain.select(rows[:1], {"last": ""}, report="report") == {}
