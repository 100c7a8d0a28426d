"""Evals of domain adaptation that read no target label: label-free validators, the proxy
A-distance, and model selection over a run's evals.

Label-free validators score a model from its softmax outputs ``probs [n, classes]`` on
unlabelled target data; every score here is oriented so that higher is better:

- ``neg_entropy``: minus the mean prediction entropy (Morerio et al. 2018, "Minimal-entropy
  correlation alignment", used entropy as a validation criterion);
- ``info_max``: information maximisation, ``H(mean_i p_i) - mean_i H(p_i)`` (confident and
  diverse predictions; Gomes et al. 2010, used as a validator by Musgrave et al. 2022,
  "Benchmarking validation methods for unsupervised domain adaptation");
- ``snd``: soft neighbourhood density (Saito et al. 2021, "Tune it the right way"): cosine
  similarities of the L2-normalised softmax vectors, a softmax over each row's other samples
  at temperature 0.05, and the mean entropy of those neighbour distributions;
- ``bnm``: batch nuclear-norm, ``||P||_* / n`` (Cui et al. 2020, "Towards discriminability and
  diversity");
- ``confidence``: the mean maximum softmax probability (Hendrycks & Gimpel 2017; "average
  confidence" as an accuracy estimate in Guillory et al. 2021).

``proxy_a_distance`` is Ben-David et al.'s (2007) ``2 (1 - 2 err)`` of a linear domain
classifier trained on one half of the two feature sets and tested on the other (Ganin et al.
2016 report it for DANN). ``select`` picks, per rule, the eval step of a run whose metric is
highest and reports a figure there (the target test accuracy, read only for the report).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

SND_TEMPERATURE = 0.05


def _entropy(p: np.ndarray, axis: int = -1) -> np.ndarray:
    return -np.sum(p * np.log(np.clip(p, 1e-12, None)), axis=axis)


def _check_probs(probs: np.ndarray) -> np.ndarray:
    probs = np.asarray(probs, np.float64)
    if probs.ndim != 2 or probs.shape[0] < 2:
        raise ValueError(
            f"label-free validators need [n >= 2, classes] probabilities, got {probs.shape}"
        )
    if not np.allclose(probs.sum(axis=1), 1.0, atol=1e-4) or probs.min() < 0:
        raise ValueError("label-free validators need softmax probabilities (rows summing to 1)")
    return probs


def neg_entropy(probs: np.ndarray) -> float:
    """``-mean_i H(p_i)`` of ``probs [n, classes]``: 0 for one-hot predictions."""
    return -float(np.mean(_entropy(_check_probs(probs))))


def info_max(probs: np.ndarray) -> float:
    """``H(mean_i p_i) - mean_i H(p_i)``; at most ``log(classes)``."""
    probs = _check_probs(probs)
    return float(_entropy(probs.mean(axis=0)) - np.mean(_entropy(probs)))


def snd(probs: np.ndarray, temperature: float = SND_TEMPERATURE) -> float:
    """Soft neighbourhood density of ``probs [n, classes]`` (higher: denser neighbourhoods)."""
    probs = _check_probs(probs)
    unit = probs / np.linalg.norm(probs, axis=1, keepdims=True)
    logits = unit @ unit.T / temperature
    np.fill_diagonal(logits, -np.inf)  # a sample is not its own neighbour
    logits -= logits.max(axis=1, keepdims=True)
    neighbours = np.exp(logits)
    neighbours /= neighbours.sum(axis=1, keepdims=True)
    return float(np.mean(_entropy(neighbours)))


def bnm(probs: np.ndarray) -> float:
    """Batch nuclear-norm ``||P||_* / n`` of ``probs [n, classes]``."""
    probs = _check_probs(probs)
    return float(np.linalg.svd(probs, compute_uv=False).sum() / probs.shape[0])


def confidence(probs: np.ndarray) -> float:
    """Mean maximum softmax probability of ``probs [n, classes]``."""
    return float(np.mean(_check_probs(probs).max(axis=1)))


VALIDATORS = {
    "neg_entropy": neg_entropy,
    "info_max": info_max,
    "snd": snd,
    "bnm": bnm,
    "confidence": confidence,
}


def label_free_scores(probs: np.ndarray) -> dict[str, float]:
    """Every validator of ``VALIDATORS`` on ``probs [n, classes]``."""
    return {name: fn(probs) for name, fn in VALIDATORS.items()}


def proxy_a_distance(source: np.ndarray, target: np.ndarray) -> float:
    """``2 (1 - 2 err)``, ``err`` the test error of a logistic regression (standardised
    features, ``C = 1``) told source ``[n, d]`` from target ``[m, d]`` when trained on the
    even-indexed rows of each and tested on the odd ones. 0: indistinguishable domains; 2:
    perfectly separable (negative values, from chance errors above 0.5, are reported as
    they are)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    source, target = np.asarray(source, np.float64), np.asarray(target, np.float64)
    if source.ndim != 2 or target.ndim != 2 or source.shape[1] != target.shape[1]:
        raise ValueError(
            f"proxy_a_distance: features [n, d] and [m, d], got {source.shape}, {target.shape}"
        )
    if min(len(source), len(target)) < 4:
        raise ValueError("proxy_a_distance: needs at least 4 examples per domain")
    x = np.concatenate([source, target])
    y = np.concatenate([np.ones(len(source)), np.zeros(len(target))])
    half = np.concatenate([np.arange(len(source)) % 2, np.arange(len(target)) % 2]) == 0
    classifier = make_pipeline(StandardScaler(), LogisticRegression(C=1.0, max_iter=2000))
    classifier.fit(x[half], y[half])
    error = float(np.mean(classifier.predict(x[~half]) != y[~half]))
    return 2.0 * (1.0 - 2.0 * error)


def select(
    rows: Sequence[Mapping[str, Any]], rules: Mapping[str, str], report: str
) -> dict[str, dict[str, Any]]:
    """Model selection over a run's eval rows (``metrics.jsonl`` rows holding ``report``).

    Args:
      rows: ``{"step": s, key: value, ...}`` rows; rows without ``report`` are ignored.
      rules: ``{rule name: metric key}``, each choosing the row where the metric is highest
        (the earliest such row on a tie); the key ``"last"`` maps to ``""`` for the last row.
      report: the key reported at each choice (e.g. the target test accuracy).

    Returns:
      ``{rule: {"step": s, "score": metric there (None for "last"), "value": report there}}``;
      a rule whose metric no row holds is left out.
    """
    rows = [r for r in rows if report in r]
    if not rows:
        return {}
    out: dict[str, dict[str, Any]] = {}
    for rule, key in rules.items():
        if not key:
            row, score = rows[-1], None
        else:
            scored = [r for r in rows if isinstance(r.get(key), (int, float))]
            if not scored:
                continue
            row = max(scored, key=lambda r: r[key])  # max keeps the first of equal ones
            score = row[key]
        out[rule] = {"step": row["step"], "score": score, "value": row[report]}
    return out
