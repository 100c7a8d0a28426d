"""Transformer text tower: CLIP-style causal with end-of-text pooling, or BERT-style
bidirectional with padding masks.

``[batch, length]`` int token ids (and optionally a ``[batch, length]`` padding mask, 1 for real
tokens) -> ``[batch, width]`` pooled features, plus named intermediates. The CLIP mode is
pre-LayerNorm with a final LayerNorm; the BERT mode (``pre_norm=False``) is post-LayerNorm with a
LayerNorm on the embeddings and token-type embeddings, as BERT checkpoints expect.
"""

from __future__ import annotations

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxalign.models.layers import RESIDUAL, Dtype, Encoder, layer_norm

POOLS = ("eot", "argmax", "first", "mean", "none")


def check_token_ids(ids: jax.Array, vocab_size: int, what: str = "token ids") -> None:
    """Raises ValueError if concrete ``ids`` fall outside ``[0, vocab_size)`` (under ``jit``
    they are tracers and are not checked; the data pipeline's tokenizer bounds them)."""
    if isinstance(ids, jax.core.Tracer):
        return
    ids = np.asarray(ids)
    if ids.size and (ids.min() < 0 or ids.max() >= vocab_size):
        bad = ids[(ids < 0) | (ids >= vocab_size)]
        raise ValueError(
            f"{what} out of range: found {int(bad[0])} (min {int(ids.min())}, max "
            f"{int(ids.max())}) for a vocabulary of {vocab_size}; shape {ids.shape}"
        )


def embedding(num: int, width: int, names: tuple[str, str], name: str) -> nn.Embed:
    return nn.Embed(
        num,
        width,
        param_dtype=jnp.float32,
        embedding_init=nn.with_logical_partitioning(nn.initializers.normal(0.02), names),
        name=name,
    )


class TextTransformer(nn.Module):
    """``[batch, length] ids -> ([batch, width], intermediates)``.

    ``pool``: "eot" (the first ``eot_token_id``, else the last real token; CLIP), "argmax"
    (the highest id, OpenAI CLIP's tokenizer convention), "first" (BERT's [CLS]), "mean"
    (over real tokens) or "none" (returns the encoded tokens' first position; for MLM read
    ``intermediates["encoded"]``).
    Intermediates: ``"encoded"`` ``[batch, length, width]``, ``"pooled"`` ``[batch, width]``.
    """

    vocab_size: int = 49408
    width: int = 512
    depth: int = 12
    mlp_dim: int = 2048
    num_heads: int = 8
    max_len: int = 77
    causal: bool = True
    pre_norm: bool = True
    pool: str = "eot"
    eot_token_id: int | None = None
    type_vocab_size: int = 0
    act: str = "gelu"
    ln_eps: float = 1e-5
    dropout: float = 0.0
    remat: str = "none"
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(
        self,
        ids: jax.Array,
        mask: jax.Array | None = None,
        token_types: jax.Array | None = None,
        deterministic: bool = True,
    ) -> tuple[jax.Array, dict[str, jax.Array]]:
        chex.assert_rank(ids, 2)
        batch, length = ids.shape
        if length > self.max_len:
            raise ValueError(
                f"TextTransformer: sequence length {length} exceeds max_len {self.max_len} "
                f"(ids {ids.shape}, [batch, length])"
            )
        if mask is not None:
            chex.assert_equal_shape([ids, mask])
        if self.pool not in POOLS:
            raise ValueError(f"TextTransformer.pool must be one of {POOLS}, got {self.pool!r}")
        check_token_ids(ids, self.vocab_size)
        x = embedding(self.vocab_size, self.width, ("vocab", "embed"), "token_embedding")(ids)
        pos = self.param(
            "pos_embedding",
            nn.with_logical_partitioning(nn.initializers.normal(0.01), ("positions", "embed")),
            (self.max_len, self.width),
        )
        x = x + pos[None, :length]
        if self.type_vocab_size:
            types = jnp.zeros_like(ids) if token_types is None else token_types
            x = x + embedding(self.type_vocab_size, self.width, (None, "embed"), "type_embedding")(
                types
            )
        x = x.astype(self.dtype)
        if not self.pre_norm:  # BERT normalises the embeddings
            x = layer_norm(self.ln_eps, self.dtype, name="ln_embed")(x)
        x = nn.with_logical_constraint(x, RESIDUAL)
        x = nn.Dropout(self.dropout)(x, deterministic)
        x = Encoder(
            self.depth,
            self.num_heads,
            self.mlp_dim,
            act=self.act,
            pre_norm=self.pre_norm,
            causal=self.causal,
            dropout=self.dropout,
            ln_eps=self.ln_eps,
            remat=self.remat,
            dtype=self.dtype,
            name="encoder",
        )(x, mask, deterministic)
        if self.pre_norm:
            x = layer_norm(self.ln_eps, self.dtype, name="ln_final")(x)
        out = {"encoded": x}
        pooled = x[jnp.arange(batch), self._pool_index(ids, mask)]
        if self.pool == "mean":
            weights = jnp.ones(ids.shape, x.dtype) if mask is None else mask.astype(x.dtype)
            pooled = jnp.einsum("bl,bld->bd", weights, x) / jnp.maximum(
                jnp.sum(weights, 1, keepdims=True), 1
            )
        out["pooled"] = pooled
        return pooled, out

    def _pool_index(self, ids: jax.Array, mask: jax.Array | None) -> jax.Array:
        """``[batch]`` the position pooled for "eot" / "argmax" / "first"."""
        batch, length = ids.shape
        if self.pool == "argmax":
            return jnp.argmax(ids, axis=1)
        if self.pool == "eot":
            last_real = (
                jnp.full((batch,), length - 1)
                if mask is None
                else jnp.maximum(jnp.sum(mask.astype(jnp.int32), 1) - 1, 0)
            )
            if self.eot_token_id is None:
                return last_real
            is_eot = ids == self.eot_token_id
            return jnp.where(jnp.any(is_eot, 1), jnp.argmax(is_eot, axis=1), last_real)
        return jnp.zeros((batch,), jnp.int32)
