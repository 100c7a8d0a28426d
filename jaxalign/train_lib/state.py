"""The train state: step, parameters, optimizer state, and the non-finite update counters."""

from __future__ import annotations

from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import optax


@flax.struct.dataclass
class TrainState:
    """Everything a step changes; a pytree, checkpointed whole.

    ``nonfinite_in_a_row`` counts consecutive skipped updates (loss or gradients not finite);
    ``nonfinite_total`` all of them.
    """

    step: jax.Array
    params: Any
    opt_state: Any
    nonfinite_in_a_row: jax.Array
    nonfinite_total: jax.Array

    @classmethod
    def create(cls, params: Any, tx: optax.GradientTransformation) -> TrainState:
        def zero():  # one buffer each: the state is donated, and a buffer cannot be given twice
            return jnp.zeros((), jnp.int32)

        return cls(
            step=zero(),
            params=params,
            opt_state=tx.init(params),
            nonfinite_in_a_row=zero(),
            nonfinite_total=zero(),
        )
