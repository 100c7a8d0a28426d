"""Contrastive objectives over the global batch: CLIP's InfoNCE, SigLIP's sigmoid loss, NT-Xent.

Each public function takes global arrays (possibly sharded along the batch over the mesh's
``data`` and ``fsdp`` axes) and returns a global scalar. With a mesh, each device gathers the
other side's embeddings and computes only its own rows of logits, ``[local, global]``, never the
``[global, global]`` matrix; the gradient of a gathered row flows back to the device that owns
it. Value and gradients equal those of the same global batch on one device.

Similarities and logits are float32 whatever the input dtype (bfloat16 inputs are gathered in
bfloat16 and multiplied with a float32 result).

References: Radford et al. 2021 (CLIP, symmetric InfoNCE); Zhai et al. 2023 (SigLIP, sigmoid
loss normalised by the batch size); Chen et al. 2020 (SimCLR, NT-Xent over 2N views).
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
from jax.sharding import Mesh

from jaxalign.objectives import blockwise, checks
from jaxalign.parallel.collectives import BatchAxes, map_over_batch

# CLIP clamps the learned inverse temperature at 100.
MAX_LOGIT_SCALE = math.log(100.0)
IMPLS = ("naive", "tiled", "ring")
DEFAULT_TILE = 1024
_COLUMNS = {"tiled": "gathered", "ring": "ring"}  # how blockwise.row_reduce reaches them


def _similarity(rows: jax.Array, cols: jax.Array) -> jax.Array:
    """``[n, dim] x [m, dim] -> [n, m]`` dot products in float32."""
    return jnp.einsum("nd,md->nm", rows, cols, preferred_element_type=jnp.float32)


def _inverse_temperature(logit_scale: jax.Array) -> jax.Array:
    return jnp.exp(jnp.minimum(logit_scale, MAX_LOGIT_SCALE))


def _cross_entropy_sum(
    logits: jax.Array, labels: jax.Array, label_smoothing: float, where: jax.Array | None = None
) -> jax.Array:
    """Summed cross-entropy of ``[rows, classes]`` logits against integer ``[rows]`` labels.

    With smoothing ``eps`` the target is ``(1 - eps) * one_hot + eps / classes`` over the
    classes ``where`` allows (all by default).
    """
    log_norm = jax.nn.logsumexp(logits, axis=1, where=where)
    picked = jnp.take_along_axis(logits, labels[:, None], axis=1)[:, 0]
    loss = log_norm - picked
    if label_smoothing:
        mean_logit = jnp.mean(logits, axis=1, where=where)
        loss = log_norm - (1.0 - label_smoothing) * picked - label_smoothing * mean_logit
    return jnp.sum(loss)


def _check_label_smoothing(caller: str, label_smoothing: float) -> None:
    if not 0.0 <= label_smoothing < 1.0:
        raise ValueError(f"{caller}: label_smoothing must be in [0, 1), got {label_smoothing}")


def _clip_loss_shard(
    axes: BatchAxes,
    image_emb: jax.Array,
    text_emb: jax.Array,
    logit_scale: jax.Array,
    *,
    label_smoothing: float,
    impl: str,
    tile: int,
) -> jax.Array:
    """One device's rows: ``[local, dim] x [local, dim] -> scalar`` (global mean)."""
    local = image_emb.shape[0]
    batch = local * axes.size
    scale = _inverse_temperature(logit_scale)
    if impl == "naive":
        all_images, all_texts = axes.gather(image_emb), axes.gather(text_emb)
        labels = axes.offset(local) + jnp.arange(local)
        image_to_text = _cross_entropy_sum(
            scale * _similarity(image_emb, all_texts), labels, label_smoothing
        )
        text_to_image = _cross_entropy_sum(
            scale * _similarity(text_emb, all_images), labels, label_smoothing
        )
        return axes.sum(image_to_text + text_to_image) / (2 * batch)

    # tiled / ring: only the log-sum-exps need the [local, global] logits; they come from
    # blockwise.row_reduce. The positive logit and the mean logit (label smoothing) are
    # O(local x dim): row i's positive is its own pair, the mean is against the global mean.
    reduce = functools.partial(
        blockwise.row_reduce,
        blockwise.LogSumExp(),
        scale=axes.vary(scale),
        bias=axes.vary(jnp.zeros((), jnp.float32)),
        tile=tile,
        axes=axes.names,
        columns=_COLUMNS[impl],
    )
    log_norms = jnp.sum(reduce(image_emb, text_emb)) + jnp.sum(reduce(text_emb, image_emb))
    positives = scale * jnp.sum(image_emb.astype(jnp.float32) * text_emb.astype(jnp.float32))
    loss = log_norms - 2.0 * (1.0 - label_smoothing) * positives
    if label_smoothing:
        sum_image, sum_text = axes.sum(
            (jnp.sum(image_emb, 0, jnp.float32), jnp.sum(text_emb, 0, jnp.float32))
        )
        # Row i's mean logit is scale * <row_i, column sum> / batch.
        summed_logits = _similarity(image_emb, sum_text[None]) + _similarity(
            text_emb, sum_image[None]
        )
        loss -= label_smoothing * scale * jnp.sum(summed_logits) / batch
    return axes.sum(loss) / (2 * batch)


def clip_loss(
    image_emb: jax.Array,
    text_emb: jax.Array,
    logit_scale: jax.Array | float,
    *,
    mesh: Mesh | None = None,
    impl: str = "naive",
    tile: int = DEFAULT_TILE,
    label_smoothing: float = 0.0,
) -> jax.Array:
    """CLIP's symmetric InfoNCE: the mean of image->text and text->image cross-entropy.

    ``[batch, dim] x [batch, dim] -> scalar``; batch over ``('data', 'fsdp')`` when a mesh is
    given. Row ``i`` of ``image_emb`` and ``text_emb`` is a matching pair; every other row of
    the global batch is a negative.

    Args:
      image_emb: ``[batch, dim]`` L2-normalised image embeddings.
      text_emb: ``[batch, dim]`` L2-normalised text embeddings, same dtype.
      logit_scale: scalar, log of the inverse temperature; clamped at ``log(100)``.
      mesh: the mesh the batch is sharded over, or None for one device.
      impl: "naive" (each device holds ``[local, global]`` logits), "tiled" (the other side is
        all-gathered, logits are built ``tile x tile`` at a time and recomputed in the backward
        pass) or "ring" (as tiled, but the other side's ``[tile, dim]`` chunks travel around the
        devices with ``ppermute``: per-device memory ``O(local x dim + tile^2)`` at any device
        count).
      tile: the tile edge for "tiled" and "ring"; batches it does not divide are padded.
        "tiled" and "ring" have a hand-written backward pass: reverse-mode (``grad``, ``vjp``)
        only, no ``jvp`` / ``hessian``.
      label_smoothing: ``eps`` in [0, 1): targets ``(1 - eps) * one_hot + eps / batch``.
    """
    caller = "clip_loss"
    checks.features(caller, mesh, same_batch=True, image_emb=image_emb, text_emb=text_emb)
    checks.choice(caller, "impl", impl, IMPLS)
    checks.positive_int(caller, "tile", tile)
    _check_label_smoothing(caller, label_smoothing)
    logit_scale = checks.scalar(caller, "logit_scale", logit_scale)
    return map_over_batch(
        _clip_loss_shard,
        mesh=mesh,
        batched=[("image_emb", image_emb), ("text_emb", text_emb)],
        replicated=[logit_scale],
        options={"label_smoothing": float(label_smoothing), "impl": impl, "tile": tile},
        caller=caller,
    )


def _siglip_loss_shard(
    axes: BatchAxes,
    image_emb: jax.Array,
    text_emb: jax.Array,
    logit_scale: jax.Array,
    logit_bias: jax.Array,
    *,
    impl: str,
    tile: int,
) -> jax.Array:
    """One device's image rows against every text: ``[local, global]`` pairs."""
    local = image_emb.shape[0]
    batch = local * axes.size
    scale = _inverse_temperature(logit_scale)
    if impl == "naive":
        all_texts = axes.gather(text_emb)
        logits = scale * _similarity(image_emb, all_texts) + logit_bias
        rows = axes.offset(local) + jnp.arange(local)
        signs = jnp.where(rows[:, None] == jnp.arange(batch)[None, :], 1.0, -1.0)
        return -axes.sum(jnp.sum(jax.nn.log_sigmoid(signs * logits))) / batch

    # tiled / ring: -log sigmoid(z * l) = softplus(-z * l), so the sum over all pairs is
    # sum_ij softplus(l_ij) (every pair a negative) minus sum_i l_ii (softplus(-x) -
    # softplus(x) = -x for the positives, which are each row's own pair).
    negatives = blockwise.row_reduce(
        blockwise.SoftplusSum(),
        image_emb,
        text_emb,
        axes.vary(scale),
        axes.vary(logit_bias),
        tile=tile,
        axes=axes.names,
        columns=_COLUMNS[impl],
    )
    positives = scale * jnp.sum(image_emb.astype(jnp.float32) * text_emb.astype(jnp.float32), 1)
    positives = positives + logit_bias
    return axes.sum(jnp.sum(negatives) - jnp.sum(positives)) / batch


def siglip_loss(
    image_emb: jax.Array,
    text_emb: jax.Array,
    logit_scale: jax.Array | float,
    logit_bias: jax.Array | float,
    *,
    mesh: Mesh | None = None,
    impl: str = "naive",
    tile: int = DEFAULT_TILE,
) -> jax.Array:
    """SigLIP's pairwise sigmoid loss over the global batch.

    ``[batch, dim] x [batch, dim] -> scalar``; batch over ``('data', 'fsdp')``. Every pair
    ``(i, j)`` is a binary problem, positive iff ``i == j``, with logit
    ``exp(logit_scale) * <image_i, text_j> + logit_bias``; the loss is the sum of the negative
    log-sigmoids over all ``batch**2`` pairs divided by ``batch``, as in the SigLIP paper.

    Args:
      image_emb, text_emb: ``[batch, dim]`` L2-normalised embeddings, one dtype.
      logit_scale: scalar log inverse temperature, clamped at ``log(100)``
        (SigLIP initialises it at ``log(10)``).
      logit_bias: scalar bias (SigLIP initialises it at -10).
      mesh: the mesh the batch is sharded over, or None for one device.
      impl: "naive", "tiled" or "ring", as for ``clip_loss``; the backward pass of "tiled"
        and "ring" recomputes each block's logits rather than keeping them.
      tile: the tile edge for "tiled" and "ring" (reverse-mode differentiation only).
    """
    caller = "siglip_loss"
    checks.features(caller, mesh, same_batch=True, image_emb=image_emb, text_emb=text_emb)
    checks.choice(caller, "impl", impl, IMPLS)
    checks.positive_int(caller, "tile", tile)
    logit_scale = checks.scalar(caller, "logit_scale", logit_scale)
    logit_bias = checks.scalar(caller, "logit_bias", logit_bias)
    return map_over_batch(
        _siglip_loss_shard,
        mesh=mesh,
        batched=[("image_emb", image_emb), ("text_emb", text_emb)],
        replicated=[logit_scale, logit_bias],
        options={"impl": impl, "tile": tile},
        caller=caller,
    )


def _nt_xent_shard(
    axes: BatchAxes, z1: jax.Array, z2: jax.Array, temperature: jax.Array
) -> jax.Array:
    """One device's rows of both views against all ``2 * global`` views."""
    local = z1.shape[0]
    all_views = jnp.concatenate([axes.gather(z1), axes.gather(z2)])  # [2 * global, dim]
    batch = all_views.shape[0] // 2
    rows = axes.offset(local) + jnp.arange(local)
    columns = jnp.arange(2 * batch)[None, :]
    total = jnp.zeros((), jnp.float32)
    # View 1's row i sits at column i and its positive at batch + i; view 2 the other way.
    for view, self_column, positive in ((z1, rows, rows + batch), (z2, rows + batch, rows)):
        logits = _similarity(view, all_views) / temperature
        not_self = columns != self_column[:, None]
        total += _cross_entropy_sum(logits, positive, 0.0, where=not_self)
    return axes.sum(total) / (2 * batch)


def nt_xent(
    z1: jax.Array,
    z2: jax.Array,
    temperature: jax.Array | float,
    *,
    mesh: Mesh | None = None,
) -> jax.Array:
    """SimCLR's NT-Xent over the ``2 * batch`` views of the global batch.

    ``[batch, dim] x [batch, dim] -> scalar``; batch over ``('data', 'fsdp')``. Row ``i`` of
    ``z1`` and ``z2`` are two views of one example. Each of the ``2 * batch`` views is
    classified against the other ``2 * batch - 1`` (itself masked out), its positive being the
    other view of its example; the loss is the mean over all views.

    Args:
      z1, z2: ``[batch, dim]`` L2-normalised projections of the two views, one dtype.
      temperature: positive scalar ``tau``; logits are cosine similarities over ``tau``.
      mesh: the mesh the batch is sharded over, or None for one device.
    """
    caller = "nt_xent"
    checks.features(caller, mesh, same_batch=True, z1=z1, z2=z2)
    temperature = checks.scalar(caller, "temperature", temperature, positive=True)
    return map_over_batch(
        _nt_xent_shard,
        mesh=mesh,
        batched=[("z1", z1), ("z2", z2)],
        replicated=[temperature],
        caller=caller,
    )
