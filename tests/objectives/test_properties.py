"""Property tests (hypothesis): invariances and known values of the objectives."""

import functools
import math

import jax
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from jaxalign import objectives
from tests.objectives.cases import mesh_named

BATCH, DIM = 16, 8


def _unit_rows(seed: int, batch: int = BATCH, dim: int = DIM) -> np.ndarray:
    x = np.random.default_rng(seed).normal(size=(batch, dim))
    return np.float32(x / np.linalg.norm(x, axis=1, keepdims=True))


@functools.cache
def _paired_loss(name: str, mesh_name: str | None):
    """A jitted ``(a, b) -> loss`` for one objective, with fixed hyper-parameters."""
    mesh = None if mesh_name is None else mesh_named(mesh_name)
    losses = {
        "clip_loss": lambda a, b: objectives.clip_loss(a, b, 2.0, mesh=mesh, label_smoothing=0.1),
        "siglip_loss": lambda a, b: objectives.siglip_loss(a, b, 2.3, -3.0, mesh=mesh),
        "nt_xent": lambda a, b: objectives.nt_xent(a, b, 0.3, mesh=mesh),
    }
    return jax.jit(losses[name])


@pytest.mark.parametrize("mesh_name", [None, "8"])
@pytest.mark.parametrize("name", ["clip_loss", "siglip_loss", "nt_xent"])
@given(seed=st.integers(0, 2**16), order=st.permutations(range(BATCH)))
def test_permuting_pairs_jointly_changes_nothing(name, mesh_name, seed, order):
    a, b = _unit_rows(seed), _unit_rows(seed + 1)
    loss = _paired_loss(name, mesh_name)
    order = np.asarray(order)
    np.testing.assert_allclose(loss(a[order], b[order]), loss(a, b), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("mesh_name", [None, "8"])
@given(
    batch=st.sampled_from([8, 24, 64]),
    logit_scale=st.floats(-2.0, 6.0),
    label_smoothing=st.floats(0.0, 0.5),
    seed=st.integers(0, 2**16),
)
def test_all_equal_embeddings_give_log_batch(mesh_name, batch, logit_scale, label_smoothing, seed):
    mesh = None if mesh_name is None else mesh_named(mesh_name)
    row = _unit_rows(seed, batch=1)
    same = np.repeat(row, batch, axis=0)
    loss = objectives.clip_loss(same, same, logit_scale, mesh=mesh, label_smoothing=label_smoothing)
    np.testing.assert_allclose(loss, math.log(batch), rtol=1e-5)


@functools.cache
def _jitted_mmd(estimator: str):
    return jax.jit(lambda x, y: objectives.mmd(x, y, estimator=estimator))


@pytest.mark.parametrize("estimator", ["unbiased", "biased", "linear"])
@given(seed=st.integers(0, 2**16), direction=st.integers(0, DIM - 1))
def test_mmd_near_zero_for_one_distribution_and_grows_with_shift(estimator, seed, direction):
    rng = np.random.default_rng(seed)
    n = 1024
    x = np.float32(rng.normal(size=(n, DIM)))
    y = np.float32(rng.normal(size=(n, DIM)))
    mmd = _jitted_mmd(estimator)
    same = float(mmd(x, y))
    unit = np.zeros(DIM, np.float32)
    unit[direction] = 1.0
    shifted = [float(mmd(x, y + shift * unit)) for shift in (1.0, 2.0, 4.0)]
    # Bounds from 200 seeds at n = 1024, dim 8 (sum of 5 kernels): |same| reached 0.006
    # (unbiased), 0.011 (biased, which is positive by O(1/n)) and 0.11 (linear: n/2 pairs,
    # standard deviation 0.044); a shift of one standard deviation gave at least 0.109 (the
    # quadratic estimators), a shift of two at least 0.42 (linear).
    noise, clear_shift = (0.25, 1) if estimator == "linear" else (0.04, 0)
    assert abs(same) < noise < shifted[clear_shift]
    assert shifted[0] < shifted[1] < shifted[2]


def test_mmd_bandwidth_carries_no_gradient():
    """The bandwidth comes from the data but is a constant for the gradient (as in DAN and TLL).

    Scaling both samples by c scales the bandwidth by c^2, so the value does not change with c;
    were the bandwidth differentiated, its derivative along c would be 0 too. It is not.
    """
    x, y = _unit_rows(1, batch=32), _unit_rows(2, batch=32) + 0.5
    scaled = lambda c: objectives.mmd(c * x, c * y)
    np.testing.assert_allclose(scaled(3.0), scaled(1.0), rtol=1e-5)
    assert abs(float(jax.grad(scaled)(1.0))) > 1e-3
