"""Gradient reversal and the DANN coefficient schedules."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxalign.objectives import (
    dann_schedule,
    gradient_reversal,
    reversal_coefficient,
    warm_start_schedule,
)


def _head(x):
    return jnp.sum(jnp.sin(x) * jnp.arange(x.size).reshape(x.shape))


@pytest.mark.parametrize("coeff", [0.0, 0.37, 1.0, 2.5])
def test_gradient_is_exactly_minus_coeff_times_plain(coeff):
    x = jnp.linspace(-2.0, 2.0, 12).reshape(3, 4)
    np.testing.assert_array_equal(gradient_reversal(x, coeff), x)  # identity forward
    plain = jax.grad(_head)(x)
    reversed_grad = jax.grad(lambda x: _head(gradient_reversal(x, coeff)))(x)
    np.testing.assert_array_equal(reversed_grad, -coeff * plain)


def test_traced_coefficient_pytree_and_dtype():
    """Under jit with a traced coefficient, on a pytree, keeping each leaf's dtype."""
    tree = {"a": jnp.ones((2, 3), jnp.bfloat16), "b": jnp.arange(4.0)}

    def loss(tree, coeff):
        out = gradient_reversal(tree, coeff)
        return jnp.sum(out["a"].astype(jnp.float32) * 3.0) + jnp.sum(out["b"] ** 2)

    grads, coeff_grad = jax.jit(jax.grad(loss, argnums=(0, 1)))(tree, jnp.float32(0.5))
    assert grads["a"].dtype == jnp.bfloat16
    np.testing.assert_array_equal(grads["a"], jnp.full((2, 3), -1.5, jnp.bfloat16))
    np.testing.assert_array_equal(grads["b"], -0.5 * 2.0 * jnp.arange(4.0))
    assert float(coeff_grad) == 0.0


def test_dann_lambda_at_known_progress():
    """lambda(p) = 2 / (1 + exp(-10 p)) - 1 (Ganin et al. 2016)."""
    formula = lambda p: 2.0 / (1.0 + math.exp(-10.0 * p)) - 1.0
    for p, value in [(0.0, 0.0), (0.5, 0.9866142981514305), (1.0, 0.9999092042625951)]:
        assert formula(p) == pytest.approx(value, abs=1e-15)
        np.testing.assert_allclose(reversal_coefficient(p), value, rtol=1e-6, atol=1e-7)
    schedule = dann_schedule(total_steps=1000)
    np.testing.assert_allclose(
        [schedule(0), schedule(500), schedule(1000)],
        [0.0, 0.9866142981514305, 0.9999092042625951],
        rtol=1e-6,
    )


def test_warm_start_schedule():
    """lo + (hi - lo) * (2 / (1 + exp(-alpha * i / max_iters)) - 1)."""
    schedule = warm_start_schedule(alpha=2.0, lo=0.1, hi=0.9, max_iters=200)
    for step in [0, 50, 200, 1000]:
        want = 0.1 + 0.8 * (2.0 / (1.0 + math.exp(-2.0 * step / 200)) - 1.0)
        np.testing.assert_allclose(schedule(step), want, rtol=1e-6)
    assert float(schedule(0)) == pytest.approx(0.1)
    # A traced step works inside a jitted train step.
    np.testing.assert_allclose(jax.jit(schedule)(jnp.int32(200)), schedule(200), rtol=1e-6)


def test_schedules_reject_empty_horizons():
    with pytest.raises(ValueError, match="total_steps must be positive"):
        dann_schedule(0)
    with pytest.raises(ValueError, match="max_iters must be positive"):
        warm_start_schedule(max_iters=0)
