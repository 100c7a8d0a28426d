"""A masked language model: a bidirectional text tower with BERT's MLM head, its output layer
tied to the input token embeddings.

``(ids [batch, length], mask [batch, length]) -> logits [batch, length, vocab]``: the tower's
encoded tokens, then dense (width) -> the tower's activation -> LayerNorm -> the token embedding
table transposed, plus a per-token bias (Devlin et al., 2019). Parameters: ``text/`` (the tower,
the layout ``jaxalign.interop.hf.load_bert`` gives) and ``mlm_head/`` (``load_bert_mlm`` reads
both).
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxalign.models.layers import Dtype, activation, dense, layer_norm
from jaxalign.models.text import TextTransformer


class MLMHead(nn.Module):
    """``[batch, length, width] -> [batch, length, vocab]`` given the ``[vocab, width]`` table."""

    act: str = "gelu"
    ln_eps: float = 1e-12
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, table: jax.Array) -> jax.Array:
        width, vocab = x.shape[-1], table.shape[0]
        x = dense(width, ("embed", "mlp"), dtype=self.dtype, name="transform")(x)
        x = activation(self.act)(x)
        x = layer_norm(self.ln_eps, self.dtype, name="ln")(x)
        bias = self.param(
            "output_bias",
            nn.with_logical_partitioning(nn.initializers.zeros_init(), ("vocab",)),
            (vocab,),
        )
        logits = jnp.einsum("blw,vw->blv", x, table.astype(self.dtype))
        return (logits + bias.astype(self.dtype)).astype(jnp.float32)


class MaskedLanguageModel(nn.Module):
    """See the module docstring; ``text`` must be bidirectional (``causal=False``)."""

    text: TextTransformer
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, ids: jax.Array, mask: jax.Array, deterministic: bool = True) -> jax.Array:
        if self.text.causal:
            raise ValueError("MaskedLanguageModel: the text tower must be bidirectional")
        _, out = self.text(ids, mask, None, deterministic)
        table = nn.meta.unbox(self.text.variables["params"]["token_embedding"]["embedding"])
        head = MLMHead(self.text.act, self.text.ln_eps, self.dtype, name="mlm_head")
        return head(out["encoded"], table)
