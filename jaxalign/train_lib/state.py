"""The train state: step, parameters, model state, optimizer state, the parameters' moving
average, and the non-finite update counters."""

from __future__ import annotations

from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import optax


@flax.struct.dataclass
class TrainState:
    """Everything a step changes; a pytree, checkpointed whole.

    ``model_state``: the model's non-parameter collections (``{"batch_stats": ...}``; ``{}``
    when it has none). ``ema_params``: the exponential moving average of ``params`` when
    ``optim.ema_decay > 0``, else ``None``. ``nonfinite_in_a_row`` counts consecutive skipped
    updates (loss or gradients not finite); ``nonfinite_total`` all of them.
    """

    step: jax.Array
    params: Any
    model_state: Any
    opt_state: Any
    ema_params: Any
    nonfinite_in_a_row: jax.Array
    nonfinite_total: jax.Array

    @classmethod
    def create(
        cls, variables: dict[str, Any], tx: optax.GradientTransformation, *, ema: bool = False
    ) -> TrainState:
        """The state before the first step, from a model's ``variables`` (``{"params": ...,
        other collections}``)."""

        def zero():  # one buffer each: the state is donated, and a buffer cannot be given twice
            return jnp.zeros((), jnp.int32)

        params = variables["params"]
        return cls(
            step=zero(),
            params=params,
            model_state={k: v for k, v in variables.items() if k != "params"},
            opt_state=tx.init(params),
            ema_params=jax.tree.map(jnp.copy, params) if ema else None,
            nonfinite_in_a_row=zero(),
            nonfinite_total=zero(),
        )

    def eval_variables(self) -> dict[str, Any]:
        """What evals read: ``{"params": the moving average if kept, else params,
        **model_state}``."""
        params = self.params if self.ema_params is None else self.ema_params
        return {"params": params, **self.model_state}
