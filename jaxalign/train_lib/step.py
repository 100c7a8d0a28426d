"""The generic train step: one factory, one jitted function for every task.

``make_train_step(loss_and_grad, tx, seed=..., ema_decay=..., state_shardings=...,
batch_sharding=...)`` returns ``step(state, batch) -> (state, metrics)``, compiled with
``jax.jit`` with explicit in / out shardings and the state donated. ``loss_and_grad(params,
model_state, batch, rng, step) -> (loss, grads, model_state, metrics)`` is the task's
(``Task.loss_and_grad``); the step gives it ``rng = fold_in(key(seed), step)`` and ``step =
state.step`` (the updates done before this one), never anything that depends on the device or
the process. An update whose loss, gradients or resulting parameters / model state are not
finite is skipped (parameters, model state, optimizer state and moving average kept) and
counted; the loop stops the run after
``max_nonfinite_in_a_row`` of them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax

from jaxalign.train_lib.state import TrainState

LossAndGrad = Callable[..., tuple[jax.Array, Any, Any, dict[str, jax.Array]]]


def _all_finite(*trees: Any) -> jax.Array:
    """Whether every element of the leaves of ``trees`` is finite (a ``bool[]``).

    The leaves' counts of non-finite elements are summed and divided into before the comparison.
    XLA copies a cheap scalar computation into every fusion that reads it, here one fusion per
    leaf of the state (``keep_if_finite``'s selects): a chain of per-leaf ``and``s grew the
    program with the square of the leaf count (the tiny CLIP step: 6,451 ``and``s in 32,814
    lines of compiled HLO), whereas a division is computed once and read by all (no ``and`` in
    17,352 lines; the compile time a third lower: docs/benchmarks.md, "Compiling the step")."""
    counts = [jnp.sum(~jnp.isfinite(x), dtype=jnp.float32) for x in jax.tree.leaves(trees)]
    if not counts:
        return jnp.array(True)
    return 1.0 / (1.0 + sum(counts)) == 1.0


def step_rng(seed: int, step: jax.Array) -> jax.Array:
    """The random key of step ``step``: ``fold_in(key(seed), step)``."""
    return jax.random.fold_in(jax.random.key(seed), step)


def train_step(
    loss_and_grad: LossAndGrad,
    tx: optax.GradientTransformation,
    state: TrainState,
    batch: Any,
    *,
    seed: int,
    ema_decay: float = 0.0,
) -> tuple[TrainState, dict[str, jax.Array]]:
    """One update (not jitted; see ``make_train_step``)."""
    rng = step_rng(seed, state.step)
    loss, grads, model_state, metrics = loss_and_grad(
        state.params, state.model_state, batch, rng, state.step
    )
    grads_finite = _all_finite(loss, grads)
    # Zero non-finite gradients before the update so its arithmetic stays finite; the update is
    # then discarded by the select below.
    safe_grads = jax.tree.map(lambda g: jnp.where(grads_finite, g, jnp.zeros_like(g)), grads)
    updates, opt_state = tx.update(safe_grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    # An update that overflows the parameters (or the model state) is skipped too, so the
    # state the loop saves and evaluates is always finite.
    finite = _all_finite(loss, grads, params, model_state)  # grads' counts: shared (CSE)

    def keep_if_finite(new, old):
        return jax.tree.map(lambda n, o: jnp.where(finite, n, o), new, old)

    ema_params = state.ema_params
    if ema_params is not None:
        ema_params = keep_if_finite(
            optax.incremental_update(params, ema_params, 1.0 - ema_decay), ema_params
        )
    skipped = (~finite).astype(jnp.int32)
    new_state = TrainState(
        step=state.step + 1,
        params=keep_if_finite(params, state.params),
        model_state=keep_if_finite(model_state, state.model_state),
        opt_state=keep_if_finite(opt_state, state.opt_state),
        ema_params=ema_params,
        nonfinite_in_a_row=jnp.where(finite, 0, state.nonfinite_in_a_row + 1),
        nonfinite_total=state.nonfinite_total + skipped,
    )
    metrics = {
        **metrics,
        "loss": loss,
        "grad_norm": optax.tree.norm(safe_grads),  # all gradients, frozen parameters' included
        "skipped": skipped,
        "nonfinite_in_a_row": new_state.nonfinite_in_a_row,
        "nonfinite_total": new_state.nonfinite_total,
    }
    return new_state, metrics


def make_train_step(
    loss_and_grad: LossAndGrad,
    tx: optax.GradientTransformation,
    *,
    seed: int,
    ema_decay: float,
    state_shardings: Any,
    batch_sharding: Any,
) -> Callable[[TrainState, Any], tuple[TrainState, dict[str, jax.Array]]]:
    """``step(state, batch) -> (state, metrics)``, jitted with the state's shardings (from the
    models' logical axis rules), the batch's (every leaf's batch over ``data`` and ``fsdp``),
    replicated metrics, and the state donated."""

    def step(state, batch):
        return train_step(loss_and_grad, tx, state, batch, seed=seed, ema_decay=ema_decay)

    return jax.jit(
        step,
        in_shardings=(state_shardings, batch_sharding),
        out_shardings=(state_shardings, None),
        donate_argnums=(0,),
    )
