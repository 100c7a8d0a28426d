"""Reconstruction and masked-prediction losses: the autoencoder's and MAE's pixel error, MLM's
cross-entropy on the chosen tokens.

Each is a global sum over a global count: every shard sums its rows' errors and weights, the
sums are added over the batch axes (``('data', 'fsdp')``), and the loss is their ratio. So the
value and gradients are the same on one device or any mesh, and a shard whose rows happen to
hold few masked patches or chosen tokens weighs exactly what its rows hold (a mean of per-shard
means would not). Errors and log-probabilities are computed in float32 whatever the inputs'
dtype.
"""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh

from jaxalign.parallel.collectives import BatchAxes, map_over_batch


def _mse_shard(
    axes: BatchAxes, prediction: jax.Array, target: jax.Array, weights: jax.Array
) -> jax.Array:
    error = jnp.mean(jnp.square(prediction.astype(jnp.float32) - target.astype(jnp.float32)), -1)
    weights = weights.astype(jnp.float32)
    total, count = axes.sum((jnp.sum(error * weights), jnp.sum(weights)))
    return total / jnp.maximum(count, 1e-12)


def masked_mean_squared_error(
    prediction: jax.Array,
    target: jax.Array,
    weights: jax.Array | None = None,
    *,
    mesh: Mesh | None = None,
) -> jax.Array:
    """Squared error averaged over the last axis, then over the weighted positions of the
    global batch: ``sum(w * e) / sum(w)``.

    ``[batch, n, dim] x [batch, n, dim] x [batch, n] -> scalar``; batch over ``('data',
    'fsdp')``. MAE: ``n`` patches of ``dim`` values, ``weights`` 1 on the hidden patches. The
    autoencoder: ``weights=None`` (every position), which is the mean over all values.

    Args:
      prediction, target: ``[batch, n, dim]``, any float dtype.
      weights: ``[batch, n]`` non-negative (0 / 1 for a mask); None for all ones. A batch
        whose weights sum to 0 gives 0.
      mesh: the mesh the batch is sharded over, or None for one device.
    """
    chex.assert_rank([prediction, target], 3)
    chex.assert_equal_shape([prediction, target])
    if weights is None:
        weights = jnp.ones(prediction.shape[:2], jnp.float32)
    chex.assert_shape(weights, prediction.shape[:2])
    return map_over_batch(
        _mse_shard,
        mesh=mesh,
        batched=[("prediction", prediction), ("target", target), ("weights", weights)],
        caller="masked_mean_squared_error",
    )


def _cross_entropy_shard(
    axes: BatchAxes, logits: jax.Array, labels: jax.Array, weights: jax.Array
) -> tuple[jax.Array, jax.Array]:
    logits, weights = logits.astype(jnp.float32), weights.astype(jnp.float32)
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
    hits = (jnp.argmax(logits, -1) == labels).astype(jnp.float32)
    total, correct, count = axes.sum(
        (jnp.sum(ce * weights), jnp.sum(hits * weights), jnp.sum(weights))
    )
    count = jnp.maximum(count, 1e-12)
    return total / count, jax.lax.stop_gradient(correct / count)


def masked_token_cross_entropy(
    logits: jax.Array, labels: jax.Array, weights: jax.Array, *, mesh: Mesh | None = None
) -> tuple[jax.Array, jax.Array]:
    """Cross-entropy summed over the weighted tokens of the global batch over their weight;
    and the top-1 accuracy on the same tokens (no gradient).

    ``[batch, length, vocab] x [batch, length] int x [batch, length] -> (scalar, scalar)``;
    batch over ``('data', 'fsdp')``. MLM: ``weights`` 1 on the tokens BERT's rule chose.

    Args:
      logits: ``[batch, length, vocab]``, any float dtype.
      labels: ``[batch, length]`` integer ids in ``[0, vocab)``.
      weights: ``[batch, length]`` non-negative; a batch with none chosen gives ``(0, 0)``.
      mesh: the mesh the batch is sharded over, or None for one device.
    """
    chex.assert_rank(logits, 3)
    chex.assert_shape([labels, weights], logits.shape[:2])
    chex.assert_type(labels, int)
    return map_over_batch(
        _cross_entropy_shard,
        mesh=mesh,
        batched=[("logits", logits), ("labels", labels), ("weights", weights)],
        caller="masked_token_cross_entropy",
    )
