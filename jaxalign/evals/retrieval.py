"""Image <-> text retrieval recall (R@k) of a dual encoder, in memory-bounded blocks.

Scores are dot products (cosine similarities for the unit embeddings a dual encoder gives).
Every figure comes from one kernel, :func:`first_match_rank`: for each query, the number of
*non-matching* keys that score **at least as high** as its best matching key. That number is
the 0-based rank of the first match when ties are broken against the match, so a tie never
over-reports: a query hits at ``k`` iff fewer than ``k`` wrong keys score ``>=`` its best right
one. The result does not depend on the order of keys or on the block size.

Memory: queries are scored ``block_size`` rows at a time against all keys, so the device holds
``[block_size, num_keys]`` scores and masks, never ``[num_queries, num_keys]``. Blocks are
padded to one shape, so the block program compiles once per ``(num_keys, dim)``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

DEFAULT_BLOCK_SIZE = 1024


@jax.jit
def _block_ranks(
    queries: jax.Array, keys: jax.Array, query_targets: jax.Array, key_targets: jax.Array
) -> jax.Array:
    """``[b, d] x [k, d]`` -> ``[b]`` int32: non-matching keys scoring ``>=`` the best match.

    A key matches a query when ``key_targets[j] == query_targets[i]``; a query without any match
    (padding rows use target -1) gets ``k``.
    """
    scores = jnp.dot(queries, keys.T, precision=jax.lax.Precision.HIGHEST)  # [b, k]
    match = query_targets[:, None] == key_targets[None, :]  # [b, k]
    best = jnp.max(jnp.where(match, scores, -jnp.inf), axis=1, keepdims=True)  # [b, 1]
    return jnp.sum((scores >= best) & ~match, axis=1, dtype=jnp.int32)


def _as_embeddings(x: Any, name: str) -> np.ndarray:
    """``[n, d]`` float32, finite, or a ValueError naming ``name``."""
    x = np.asarray(x, dtype=np.float32)
    if x.ndim != 2:
        raise ValueError(f"{name} must be [n, dim], got shape {x.shape}")
    if not np.all(np.isfinite(x)):
        raise ValueError(f"{name} holds {int(np.sum(~np.isfinite(x)))} non-finite values")
    return x


def _as_targets(x: Any, n: int, limit: int, name: str) -> np.ndarray:
    """``[n]`` int32 in ``[0, limit)``, or a ValueError naming ``name``."""
    x = np.asarray(x)
    if x.shape != (n,) or not np.issubdtype(x.dtype, np.integer):
        raise ValueError(f"{name} must be [{n}] integers, got shape {x.shape} dtype {x.dtype}")
    if n and (x.min() < 0 or x.max() >= limit):
        raise ValueError(f"{name} must lie in [0, {limit}), got values in [{x.min()}, {x.max()}]")
    return x.astype(np.int32)


def _check_ks(ks: Sequence[int]) -> tuple[int, ...]:
    ks = tuple(ks)
    if not ks or any(isinstance(k, bool) or not isinstance(k, int) or k < 1 for k in ks):
        raise ValueError(f"ks must be positive ints, got {ks!r}")
    return ks


def first_match_rank(
    queries: Any,
    keys: Any,
    query_targets: Any,
    key_targets: Any,
    *,
    block_size: int = DEFAULT_BLOCK_SIZE,
) -> np.ndarray:
    """``[q, d] x [k, d]`` -> ``[q]`` int: per query, how many non-matching keys score at least
    as high as its best-scoring matching key (the 0-based rank of its first match, ties counted
    against the match; ``k`` for a query with no match).

    Args:
      queries: ``[q, d]`` query embeddings.
      keys: ``[k, d]`` key embeddings, same ``d``.
      query_targets: ``[q]`` ints; key ``j`` matches query ``i`` iff
        ``key_targets[j] == query_targets[i]``. Must be ``>= 0``.
      key_targets: ``[k]`` ints, ``>= 0``.
      block_size: queries scored per device call; peak memory is ``O(block_size * k)``.

    Recall at ``k`` is ``mean(first_match_rank(...) < k)``.
    """
    queries = np.asarray(queries, dtype=np.float32)
    keys = np.asarray(keys, dtype=np.float32)
    query_targets = np.asarray(query_targets, dtype=np.int32)
    key_targets = np.asarray(key_targets, dtype=np.int32)
    if block_size < 1:
        raise ValueError(f"block_size must be >= 1, got {block_size}")
    if queries.ndim != 2 or keys.ndim != 2 or queries.shape[1] != keys.shape[1]:
        raise ValueError(f"queries {queries.shape} and keys {keys.shape} must be [n, same dim]")
    num_queries = queries.shape[0]
    if query_targets.shape != (num_queries,) or key_targets.shape != (keys.shape[0],):
        raise ValueError(
            f"query_targets {query_targets.shape} and key_targets {key_targets.shape} must be "
            f"[{num_queries}] and [{keys.shape[0]}]"
        )
    if (query_targets < 0).any() or (key_targets < 0).any():
        raise ValueError("query_targets and key_targets must be >= 0")
    if num_queries == 0:
        return np.zeros((0,), np.int64)
    block = min(block_size, num_queries)
    device_keys = jax.device_put(keys)
    device_key_targets = jax.device_put(key_targets)
    ranks = []
    for start in range(0, num_queries, block):
        rows = queries[start : start + block]
        targets = query_targets[start : start + block]
        pad = block - rows.shape[0]
        if pad:  # one block shape: the last block is padded with rows that match nothing
            rows = np.concatenate([rows, np.zeros((pad, rows.shape[1]), np.float32)])
            targets = np.concatenate([targets, np.full((pad,), -1, np.int32)])
        out = _block_ranks(rows, device_keys, targets, device_key_targets)
        ranks.append(np.asarray(out)[: block - pad])
    return np.concatenate(ranks).astype(np.int64)


def retrieval_recall(
    image_embeddings: Any,
    text_embeddings: Any,
    text_to_image: Any | None = None,
    ks: Sequence[int] = (1, 5, 10),
    *,
    block_size: int = DEFAULT_BLOCK_SIZE,
) -> dict[str, float]:
    """Image -> text and text -> image recall at each ``k``.

    Args:
      image_embeddings: ``[n_img, dim]`` (unit rows).
      text_embeddings: ``[n_txt, dim]`` (unit rows).
      text_to_image: ``[n_txt]`` ints in ``[0, n_img)``: the image each caption describes
        (several captions may share an image; every image needs at least one). Default
        ``arange(n_txt)`` (one caption per image, in order; needs ``n_txt == n_img``).
      ks: the cut-offs ``k`` (each ``>= 1``).
      block_size: rows scored per device call (memory ``O(block_size * max(n_img, n_txt))``).

    Returns:
      ``{"i2t_R@k": ..., "t2i_R@k": ...}`` for each ``k`` (Python floats in ``[0, 1]``):
      ``i2t_R@k`` is the fraction of images with at least one of their captions among the top
      ``k`` texts; ``t2i_R@k`` the fraction of texts whose image is among the top ``k`` images.
      Ties are counted against the correct item (see the module docstring). A ``k`` at least
      the number of candidates gives 1.

    Raises:
      ValueError: bad shapes, non-finite embeddings, ``text_to_image`` out of range, or an
        image without a caption.
    """
    images = _as_embeddings(image_embeddings, "image_embeddings")
    texts = _as_embeddings(text_embeddings, "text_embeddings")
    ks = _check_ks(ks)
    n_img, n_txt = images.shape[0], texts.shape[0]
    if images.shape[1] != texts.shape[1]:
        raise ValueError(
            f"image_embeddings {images.shape} and text_embeddings {texts.shape} differ in dim"
        )
    if n_img == 0 or n_txt == 0:
        raise ValueError(f"retrieval_recall needs images and texts, got {n_img} and {n_txt}")
    if text_to_image is None:
        if n_txt != n_img:
            raise ValueError(
                f"{n_txt} texts for {n_img} images: pass text_to_image to say which image each "
                "text belongs to"
            )
        text_to_image = np.arange(n_txt)
    owner = _as_targets(text_to_image, n_txt, n_img, "text_to_image")
    captions_per_image = np.bincount(owner, minlength=n_img)
    if np.any(captions_per_image == 0):
        missing = np.flatnonzero(captions_per_image == 0)
        raise ValueError(
            f"{missing.size} of {n_img} images have no caption in text_to_image "
            f"(e.g. image {int(missing[0])}); image->text recall would be undefined"
        )
    image_ids = np.arange(n_img, dtype=np.int32)
    i2t = first_match_rank(images, texts, image_ids, owner, block_size=block_size)
    t2i = first_match_rank(texts, images, owner, image_ids, block_size=block_size)
    metrics = {f"i2t_R@{k}": float(np.mean(i2t < k)) for k in ks}
    metrics.update({f"t2i_R@{k}": float(np.mean(t2i < k)) for k in ks})
    return metrics
