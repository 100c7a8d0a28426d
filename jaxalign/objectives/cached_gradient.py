"""Cached-gradient accumulation: a contrastive loss over the full batch, activations of one
micro-batch at a time (the GradCache idea, Gao et al. 2021).

A contrastive loss does not decompose over micro-batches (every example is every other's
negative), so plain gradient accumulation changes the objective. Here the loss is taken once
over the embeddings of the whole global batch, and only the encoders are run micro-batch by
micro-batch:

1. embed every micro-batch with no gradient (no activations kept);
2. take the loss and its gradient with respect to the embeddings and the parameters the loss
   reads itself (``logit_scale``, ``logit_bias``), over the full batch, with any ``impl``;
3. for each micro-batch, re-run the encoder under ``jax.vjp`` and pull the embeddings'
   gradient back to the parameters; sum over micro-batches.

The result equals the gradient of the full-batch step. ``embed_fn`` runs twice per micro-batch,
so any randomness in it (dropout) must be keyed by example, not drawn anew (docs/architecture.md,
principle 6).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from jaxalign.objectives import checks
from jaxalign.parallel.mesh import batch_axes, batch_shard_count, batch_sharding, describe_mesh

PyTree = Any


def _split(batch: PyTree, num_microbatches: int, mesh: Mesh | None) -> PyTree:
    """``[batch, ...] -> [micro, batch / micro, ...]``, micro-batch ``k`` taking rows
    ``k, k + micro, k + 2 micro, ...``: with the batch sharded contiguously over the devices,
    every micro-batch is spread over all of them and no row moves."""

    def split(x):
        x = x.reshape((x.shape[0] // num_microbatches, num_microbatches, *x.shape[1:]))
        x = jnp.swapaxes(x, 0, 1)
        if mesh is not None:
            spec = PartitionSpec(None, batch_axes(mesh))
            x = jax.lax.with_sharding_constraint(x, NamedSharding(mesh, spec))
        return x

    return jax.tree.map(split, batch)


def _merge(micro: PyTree, mesh: Mesh | None) -> PyTree:
    """The inverse of ``_split``: ``[micro, batch / micro, ...] -> [batch, ...]``."""

    def merge(x):
        x = jnp.swapaxes(x, 0, 1)
        x = x.reshape((x.shape[0] * x.shape[1], *x.shape[2:]))
        if mesh is not None:
            x = jax.lax.with_sharding_constraint(x, batch_sharding(mesh))
        return x

    return jax.tree.map(merge, micro)


def cached_gradient(
    embed_fn: Callable[[PyTree, PyTree], PyTree],
    loss_fn: Callable[[PyTree, PyTree], jax.Array],
    params: PyTree,
    batch: PyTree,
    *,
    num_microbatches: int,
    mesh: Mesh | None = None,
) -> tuple[jax.Array, PyTree]:
    """The value and parameter gradient of ``loss_fn(params, embed_fn(params, batch))``.

    Args:
      embed_fn: ``(params, batch) -> embeddings``, a pytree of ``[batch, ...]`` arrays (e.g.
        ``(image_emb, text_emb)``); row ``i`` of the output depends only on row ``i`` of the
        input.
      loss_fn: ``(params, embeddings) -> scalar`` over the full batch (e.g. ``clip_loss`` with
        the model's ``logit_scale``, any ``impl``).
      params: the parameters, a pytree.
      batch: a pytree of ``[batch, ...]`` arrays, batch over ``('data', 'fsdp')``.
      num_microbatches: how many pieces the encoders run in; it must divide the per-device
        batch (the global batch with no mesh).
      mesh: the mesh the batch is sharded over, or None.

    Returns:
      ``(loss, grads)`` with ``grads`` shaped like ``params``.
    """
    checks.positive_int("cached_gradient", "num_microbatches", num_microbatches)
    leaves = jax.tree.leaves(batch)
    if not leaves:
        raise ValueError("cached_gradient: the batch is empty")
    global_batch = leaves[0].shape[0]
    per_device = global_batch // batch_shard_count(mesh)
    for leaf in leaves:
        if leaf.shape[0] != global_batch:
            raise ValueError(
                f"cached_gradient: batch leaves differ in batch size: {leaf.shape} vs "
                f"{global_batch}"
            )
    if per_device % num_microbatches:
        raise ValueError(
            f"cached_gradient: num_microbatches={num_microbatches} must divide the per-device "
            f"batch {per_device} (global {global_batch}, {describe_mesh(mesh)})"
        )

    micro = _split(batch, num_microbatches, mesh)
    frozen = jax.lax.stop_gradient(params)
    # 1. Embeddings of every micro-batch; lax.map keeps no activations for a backward pass.
    embeddings = _merge(jax.lax.map(lambda mb: embed_fn(frozen, mb), micro), mesh)
    # 2. The loss over the full batch, and its gradient wrt the embeddings and params.
    loss, (grads, embedding_grads) = jax.value_and_grad(loss_fn, argnums=(0, 1))(params, embeddings)
    micro_embedding_grads = _split(embedding_grads, num_microbatches, mesh)

    # 3. Back-propagate micro-batch by micro-batch, summing the parameter gradients.
    def accumulate(grads, inputs):
        mb, cotangent = inputs
        _, pull_back = jax.vjp(lambda p: embed_fn(p, mb), params)
        (param_grads,) = pull_back(cotangent)
        return jax.tree.map(jnp.add, grads, param_grads), None

    grads, _ = jax.lax.scan(accumulate, grads, (micro, micro_embedding_grads))
    return loss, grads
