"""The generic train step: one factory, one jitted function for every task.

``make_train_step(grad_fn, tx, state_shardings, batch_sharding)`` returns
``step(state, batch) -> (state, metrics)``, compiled with ``jax.jit`` with explicit in / out
shardings and the state donated. ``grad_fn(params, batch) -> (loss, grads, metrics)`` is the
task's (plain ``value_and_grad`` or cached-gradient accumulation). An update whose loss or
gradients are not finite is skipped (parameters and optimizer state kept) and counted; the loop
stops the run after ``max_nonfinite_in_a_row`` of them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax

from jaxalign.train_lib.state import TrainState

GradFn = Callable[[Any, Any], tuple[jax.Array, Any, dict[str, jax.Array]]]


def _all_finite(tree: Any) -> jax.Array:
    leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]
    return jnp.all(jnp.stack(leaves)) if leaves else jnp.array(True)


def train_step(
    grad_fn: GradFn,
    tx: optax.GradientTransformation,
    state: TrainState,
    batch: Any,
) -> tuple[TrainState, dict[str, jax.Array]]:
    """One update (not jitted; see ``make_train_step``)."""
    loss, grads, metrics = grad_fn(state.params, batch)
    finite = jnp.isfinite(loss) & _all_finite(grads)
    # Zero non-finite gradients before the update so its arithmetic stays finite; the update is
    # then discarded by the select below.
    safe_grads = jax.tree.map(lambda g: jnp.where(finite, g, jnp.zeros_like(g)), grads)
    updates, opt_state = tx.update(safe_grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)

    def keep_if_finite(new, old):
        return jax.tree.map(lambda n, o: jnp.where(finite, n, o), new, old)

    skipped = (~finite).astype(jnp.int32)
    new_state = TrainState(
        step=state.step + 1,
        params=keep_if_finite(params, state.params),
        opt_state=keep_if_finite(opt_state, state.opt_state),
        nonfinite_in_a_row=jnp.where(finite, 0, state.nonfinite_in_a_row + 1),
        nonfinite_total=state.nonfinite_total + skipped,
    )
    metrics = {
        **metrics,
        "loss": loss,
        "grad_norm": optax.tree.norm(safe_grads),
        "skipped": skipped,
        "nonfinite_in_a_row": new_state.nonfinite_in_a_row,
        "nonfinite_total": new_state.nonfinite_total,
    }
    return new_state, metrics


def make_train_step(
    grad_fn: GradFn,
    tx: optax.GradientTransformation,
    state_shardings: Any,
    batch_sharding: Any,
) -> Callable[[TrainState, Any], tuple[TrainState, dict[str, jax.Array]]]:
    """``step(state, batch) -> (state, metrics)``, jitted with the state's shardings (from the
    models' logical axis rules), the batch's (batch over ``data`` and ``fsdp``), replicated
    metrics, and the state donated."""

    def step(state, batch):
        return train_step(grad_fn, tx, state, batch)

    return jax.jit(
        step,
        in_shardings=(state_shardings, batch_sharding),
        out_shardings=(state_shardings, None),
        donate_argnums=(0,),
    )
