"""Random masks for masked modelling: MAE's patch mask and BERT's token rule.

Each example's draw comes from ``fold_in(rng, i)`` for its index ``i`` in the global batch, and
the step's ``rng`` is ``fold_in(key(seed), step)`` (``jaxalign.tasks.base``): a mask is fixed by
``(seed, step, example index)``, whatever the mesh or the number of processes. The functions
run on the global batch inside the jitted step (batch over ``data``, ``fsdp``).
"""

from __future__ import annotations

import math

import chex
import jax
import jax.numpy as jnp

# BERT's rule (Devlin et al., 2019): of the chosen tokens, 80% -> [MASK], 10% -> a random
# token, 10% unchanged.
MASK_FRACTION, RANDOM_FRACTION = 0.8, 0.1


def _example_keys(rng: jax.Array, batch: int) -> jax.Array:
    """``[batch]`` keys, ``fold_in(rng, i)`` for example ``i``."""
    return jax.vmap(lambda i: jax.random.fold_in(rng, i))(jnp.arange(batch))


def kept_patches(num_patches: int, mask_ratio: float) -> int:
    """How many of ``num_patches`` stay visible: ``floor(num_patches * (1 - mask_ratio))``, at
    least 1 (MAE's rule; 16 patches at 0.75 keep 4)."""
    if not 0.0 <= mask_ratio < 1.0:
        raise ValueError(f"mask_ratio={mask_ratio} must be in [0, 1)")
    return max(1, math.floor(num_patches * (1.0 - mask_ratio) + 1e-9))


def random_patch_mask(
    rng: jax.Array, batch: int, num_patches: int, mask_ratio: float
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """MAE's per-example random masking (He et al., 2022): each example keeps
    ``K = kept_patches(num_patches, mask_ratio)`` patches chosen uniformly at random.

    Returns:
      ``keep`` ``[batch, K]`` int32: the visible patches' indices, in the order they are fed
      to the encoder; ``restore`` ``[batch, num_patches]`` int32: where each patch sits in
      ``[visible..., masked...]`` order (``take_along_axis`` of that sequence with it gives the
      patches back in grid order); ``mask`` ``[batch, num_patches]`` float32, 1 for a masked
      patch (exactly ``num_patches - K`` per row).
    """
    keep_count = kept_patches(num_patches, mask_ratio)
    noise = jax.vmap(lambda key: jax.random.uniform(key, (num_patches,)))(_example_keys(rng, batch))
    order = jnp.argsort(noise, axis=1).astype(jnp.int32)
    restore = jnp.argsort(order, axis=1).astype(jnp.int32)
    mask = (restore >= keep_count).astype(jnp.float32)
    return order[:, :keep_count], restore, mask


def bert_mask(
    rng: jax.Array,
    ids: jax.Array,
    maskable: jax.Array,
    *,
    mask_token_id: int,
    vocab_size: int,
    ratio: float = 0.15,
    indices: jax.Array | None = None,
) -> tuple[jax.Array, jax.Array]:
    """BERT's masked-language-model corruption of ``ids`` ``[batch, length]``.

    In each sequence exactly ``round(ratio * m)`` tokens are chosen, ``m`` being its count of
    ``maskable`` tokens (``[batch, length]`` bool: not special, not padding; others are never
    chosen), uniformly at random among them. Each chosen token independently becomes
    ``mask_token_id`` with probability 0.8, a token drawn uniformly from ``[0, vocab_size)``
    with 0.1, and stays itself with 0.1 (the loss is still computed on it). Row ``i`` draws
    from ``fold_in(rng, indices[i])`` (``indices``: ``[batch]`` example indices; default its
    position in the batch).

    Returns:
      ``(inputs [batch, length] int32, chosen [batch, length] bool)``.
    """
    chex.assert_equal_shape([ids, maskable])
    batch, length = ids.shape
    if indices is None:
        keys = _example_keys(rng, batch)
    else:
        keys = jax.vmap(lambda i: jax.random.fold_in(rng, i))(indices)

    def one(key, row_ids, row_maskable):
        pick, kind, token = jax.random.split(key, 3)
        count = jnp.round(ratio * jnp.sum(row_maskable)).astype(jnp.int32)
        score = jnp.where(row_maskable, jax.random.uniform(pick, (length,)), 2.0)
        rank = jnp.argsort(jnp.argsort(score))  # 0 for the smallest score
        chosen = rank < count  # never a non-maskable token: its score 2 ranks last
        u = jax.random.uniform(kind, (length,))
        random_ids = jax.random.randint(token, (length,), 0, vocab_size)
        replaced = jnp.where(u < MASK_FRACTION, mask_token_id, row_ids)
        replaced = jnp.where(
            (u >= MASK_FRACTION) & (u < MASK_FRACTION + RANDOM_FRACTION), random_ids, replaced
        )
        return jnp.where(chosen, replaced, row_ids).astype(jnp.int32), chosen

    return jax.vmap(one)(keys, ids, maskable)
