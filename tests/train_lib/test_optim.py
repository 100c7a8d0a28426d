"""The optimizer's LARS option against its definition: a layer-wise trust ratio and weight decay
on kernels, plain momentum on biases and norm parameters."""

import jax.numpy as jnp
import ml_collections
import numpy as np

from jaxalign import config as config_lib
from jaxalign.train_lib import make_optimizer

LR, DECAY, TRUST = 0.5, 1e-2, 1e-3  # TRUST: the trust coefficient LARS's docstring states


def _optim(name):
    values = dict(lr=LR, warmup_steps=0, min_lr_ratio=1.0, weight_decay=DECAY, clip_norm=0.0)
    return ml_collections.ConfigDict(config_lib.optim_group(name=name, **values))


def test_lars_first_two_updates_follow_the_definition():
    params = {"dense": {"kernel": jnp.full((3, 2), 2.0), "bias": jnp.array([1.0, -1.0])}}
    grads = {"dense": {"kernel": jnp.arange(6.0).reshape(3, 2) / 10, "bias": jnp.array([0.3, 0.1])}}
    tx, _ = make_optimizer(_optim("lars"), total_steps=10)
    state = tx.init(params)
    updates, state = tx.update(grads, state, params)

    w, g = np.asarray(params["dense"]["kernel"]), np.asarray(grads["dense"]["kernel"])
    decayed = g + DECAY * w
    ratio = TRUST * np.linalg.norm(w) / np.linalg.norm(decayed)
    np.testing.assert_allclose(updates["dense"]["kernel"], -LR * ratio * decayed, rtol=1e-5)
    # The bias: no decay, no trust ratio, only the learning rate.
    np.testing.assert_allclose(updates["dense"]["bias"], -LR * np.asarray([0.3, 0.1]), rtol=1e-6)

    # Second step: momentum 0.9 (optim.b1) over the scaled steps.
    again, _ = tx.update(grads, state, params)
    np.testing.assert_allclose(
        again["dense"]["bias"], -LR * 1.9 * np.asarray([0.3, 0.1]), rtol=1e-6
    )


def test_adamw_is_the_default_and_differs_from_lars():
    params = {"kernel": jnp.ones((2, 2))}
    grads = {"kernel": jnp.full((2, 2), 0.5)}
    adamw, _ = make_optimizer(_optim("adamw"), total_steps=10)
    step, _ = adamw.update(grads, adamw.init(params), params)
    # Adam's first step is lr * sign(g) (plus decoupled decay lr * wd * w).
    np.testing.assert_allclose(step["kernel"], -LR * (1.0 + DECAY), rtol=1e-4)
    assert config_lib.optim_group(lr=1.0)["name"] == "adamw"
