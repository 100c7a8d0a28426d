"""Transformer building blocks shared by the image and text towers.

Every parameter carries logical axis names (``embed``, ``mlp``, ``heads``, ``kv``; mapped to the
mesh by ``jaxalign.parallel.sharding.LOGICAL_RULES``) and the residual stream is constrained to
``("act_batch", "act_length", "act_embed")``. Parameters are float32; ``dtype`` is the compute
dtype (e.g. bfloat16). Attention goes through ``jax.nn.dot_product_attention``: on a GPU, with
bfloat16 or float16 heads of a size cuDNN's fused (flash) attention takes, through that kernel
(``attention_implementation``), its sequences padded to a multiple of ``FUSED_LENGTH_MULTIPLE``
(the kernel refuses odd lengths when training: ViT-B/16's 197 tokens, CLIP's 77) with the padding
masked by sequence lengths; elsewhere through XLA's own.

The block layout is the one CLIP / ViT / BERT checkpoints use (separate q, k, v and output
projections with biases; a two-layer MLP), so Hugging Face weights map one to one
(``jaxalign.interop.hf``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

Dtype = Any

ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "gelu": lambda x: nn.gelu(x, approximate=False),  # BERT, ViT
    "gelu_tanh": lambda x: nn.gelu(x, approximate=True),  # big_vision, SigLIP
    "quick_gelu": lambda x: x * nn.sigmoid(1.702 * x),  # OpenAI CLIP
    "relu": nn.relu,
}

RESIDUAL = ("act_batch", "act_length", "act_embed")
REMAT_POLICIES = {
    "none": None,
    "full": None,  # save nothing, recompute the whole block
    "dots": jax.checkpoint_policies.checkpoint_dots,
    "dots_no_batch": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}


def activation(name: str) -> Callable[[jax.Array], jax.Array]:
    if name not in ACTIVATIONS:
        raise ValueError(f"unknown activation {name!r}; choose from {sorted(ACTIVATIONS)}")
    return ACTIVATIONS[name]


class Dense(nn.Module):
    """``[..., *in_dims] -> [..., *features]``, contracting the last ``contract`` input dims.

    The kernel ``[*in_dims, *features]`` carries the logical axis ``names`` (the bias the
    output axes'). Written here rather than ``nn.DenseGeneral`` because that one initialises a
    flattened 2-D kernel and reshapes it, which breaks logical names of rank > 2 once axis rules
    are active.
    """

    features: int | tuple[int, ...]
    names: tuple[str | None, ...]
    contract: int = 1
    use_bias: bool = True
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        features = self.features if isinstance(self.features, tuple) else (self.features,)
        in_dims = x.shape[x.ndim - self.contract :]
        in_axes = tuple(range(self.contract))
        out_axes = tuple(range(self.contract, self.contract + len(features)))
        init = nn.initializers.variance_scaling(
            1.0, "fan_avg", "uniform", in_axis=in_axes, out_axis=out_axes
        )
        kernel = self.param(
            "kernel",
            nn.with_logical_partitioning(init, self.names),
            in_dims + features,
            jnp.float32,
        )
        y = jnp.tensordot(
            x.astype(self.dtype),
            kernel.astype(self.dtype),
            axes=(tuple(range(x.ndim - self.contract, x.ndim)), in_axes),
        )
        if self.use_bias:
            bias = self.param(
                "bias",
                nn.with_logical_partitioning(
                    nn.initializers.zeros_init(), self.names[self.contract :]
                ),
                features,
                jnp.float32,
            )
            y = y + bias.astype(self.dtype)
        return y


def dense(features, names, *, use_bias=True, dtype=jnp.float32, name=None, contract=1) -> Dense:
    """A ``Dense`` whose kernel has logical axis ``names``."""
    return Dense(features, tuple(names), contract, use_bias, dtype, name=name)


def layer_norm(epsilon: float, dtype: Dtype, name: str | None = None) -> nn.LayerNorm:
    return nn.LayerNorm(
        epsilon=epsilon,
        dtype=dtype,
        param_dtype=jnp.float32,
        scale_init=nn.with_logical_partitioning(nn.initializers.ones_init(), ("embed",)),
        bias_init=nn.with_logical_partitioning(nn.initializers.zeros_init(), ("embed",)),
        name=name,
    )


class MlpBlock(nn.Module):
    """``[batch, length, width] -> [batch, length, width]``: dense, activation, dense."""

    mlp_dim: int
    act: str = "gelu"
    dropout: float = 0.0
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, deterministic: bool = True) -> jax.Array:
        width = x.shape[-1]
        h = dense(self.mlp_dim, ("embed", "mlp"), dtype=self.dtype, name="fc1")(x)
        h = nn.with_logical_constraint(h, ("act_batch", "act_length", "act_mlp"))
        h = activation(self.act)(h)
        h = nn.Dropout(self.dropout)(h, deterministic)
        return dense(width, ("mlp", "embed"), dtype=self.dtype, name="fc2")(h)


FUSED_LENGTH_MULTIPLE = 8


def fused_attention_accepts(head_dim: int, dtype: Dtype) -> bool:
    """Whether cuDNN's fused attention takes heads of ``head_dim`` in ``dtype``: bfloat16 or
    float16, a head dim that is a multiple of 8 up to 128 (jax's own check in
    ``jax._src.cudnn.fused_attention_stablehlo``; Hopper also takes up to 256)."""
    half = jnp.dtype(dtype) in (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16))
    return half and head_dim % 8 == 0 and head_dim <= 128


def fused_attention_device() -> bool:
    """Whether this process's devices run cuDNN's fused attention: NVIDIA GPUs (CUDA) of
    compute capability 8.0 or later (Ampere, Hopper, ...). ROCm GPUs and older NVIDIA ones
    do not."""
    device = jax.devices()[0]
    capability = getattr(device, "compute_capability", None)
    try:
        major, minor = (int(part) for part in str(capability).split(".")[:2])
    except ValueError:  # None, or a ROCm "gfx90a"
        return False
    return device.platform == "gpu" and (major, minor) >= (8, 0)


def attention_implementation(head_dim: int, dtype: Dtype, fused_device: bool | None = None) -> str:
    """``"cudnn"`` on a device that runs the fused kernel (``fused_device``, by default
    ``fused_attention_device()``) for heads it takes, else ``"xla"``."""
    if fused_device is None:
        fused_device = fused_attention_device()
    return "cudnn" if fused_device and fused_attention_accepts(head_dim, dtype) else "xla"


def dot_product_attention(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    mask: jax.Array | None,
    causal: bool,
    implementation: str = "xla",
) -> jax.Array:
    """Softmax attention, ``[batch, length, heads, head_dim]`` (q, k, v) -> like q.

    ``mask``: ``[batch, length]``, 1 for real tokens, which come first in each row (right
    padding, as jaxalign's tokenizers give), or None. With ``implementation="xla"`` it is a
    key mask; otherwise (``"cudnn"``) the sequences are padded to a multiple of
    ``FUSED_LENGTH_MULTIPLE`` and the mask becomes the keys' sequence lengths (the same
    result, as ``tests/models/test_attention.py`` checks through XLA; a row with no real token
    attends to its first key instead of to all keys evenly).
    """
    if implementation == "xla":
        key_mask = None if mask is None else mask[:, None, None, :].astype(bool)  # [b, 1, 1, s]
        return jax.nn.dot_product_attention(
            q, k, v, mask=key_mask, is_causal=causal, implementation="xla"
        )
    return padded_attention(q, k, v, mask, causal, implementation)


def padded_attention(q, k, v, mask, causal, implementation):
    """``dot_product_attention``'s fused form (any ``implementation``): query and key lengths
    padded to a multiple of ``FUSED_LENGTH_MULTIPLE``, padded keys masked by
    ``key_value_seq_lengths`` (``mask`` over the keys, ``[batch, key length]``)."""
    batch, queries, keys = q.shape[0], q.shape[1], k.shape[1]
    if mask is None:
        lengths = jnp.full((batch,), keys, jnp.int32)
    else:  # at least 1: a row with no key at all would divide by zero in the kernel
        lengths = jnp.maximum(jnp.sum(mask, axis=-1, dtype=jnp.int32), 1)

    def pad(t: jax.Array) -> jax.Array:
        extra = -t.shape[1] % FUSED_LENGTH_MULTIPLE
        return jnp.pad(t, [(0, 0), (0, extra), (0, 0), (0, 0)])

    out = jax.nn.dot_product_attention(
        pad(q),
        pad(k),
        pad(v),
        key_value_seq_lengths=lengths,
        is_causal=causal,
        implementation=implementation,
    )
    return out[:, :queries]


class Attention(nn.Module):
    """Multi-head self-attention, ``[batch, length, width] -> [batch, length, width]``.

    ``mask``: ``[batch, length]`` true for real tokens (keys that may be attended to), or None.
    ``causal``: each token attends to itself and earlier tokens only.
    """

    num_heads: int
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, mask: jax.Array | None, causal: bool) -> jax.Array:
        width = x.shape[-1]
        if width % self.num_heads:
            raise ValueError(f"width {width} is not divisible by num_heads {self.num_heads}")
        head_dim = width // self.num_heads
        shape = (self.num_heads, head_dim)
        names = ("embed", "heads", "kv")
        q, k, v = (dense(shape, names, dtype=self.dtype, name=n)(x) for n in ("q", "k", "v"))
        heads = ("act_batch", "act_length", "act_heads", "act_kv")
        q, k, v = (nn.with_logical_constraint(t, heads) for t in (q, k, v))
        implementation = attention_implementation(head_dim, self.dtype)
        out = dot_product_attention(q, k, v, mask, causal, implementation)
        return dense(width, ("heads", "kv", "embed"), dtype=self.dtype, name="out", contract=2)(out)


class EncoderBlock(nn.Module):
    """One Transformer layer on the residual stream ``[batch, length, width]``.

    ``pre_norm=True``: ``x + attn(ln(x))``, ``x + mlp(ln(x))`` (CLIP, ViT);
    ``pre_norm=False``: ``ln(x + attn(x))``, ``ln(x + mlp(x))`` (BERT).
    """

    num_heads: int
    mlp_dim: int
    act: str = "gelu"
    pre_norm: bool = True
    causal: bool = False
    dropout: float = 0.0
    ln_eps: float = 1e-5
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(
        self, x: jax.Array, mask: jax.Array | None = None, deterministic: bool = True
    ) -> jax.Array:
        attention = Attention(self.num_heads, dtype=self.dtype, name="attn")
        mlp = MlpBlock(self.mlp_dim, self.act, self.dropout, dtype=self.dtype, name="mlp")
        ln1 = layer_norm(self.ln_eps, self.dtype, name="ln1")
        ln2 = layer_norm(self.ln_eps, self.dtype, name="ln2")
        drop = nn.Dropout(self.dropout)
        if self.pre_norm:
            x = x + drop(attention(ln1(x), mask, self.causal), deterministic)
            x = nn.with_logical_constraint(x, RESIDUAL)
            x = x + drop(mlp(ln2(x), deterministic), deterministic)
        else:
            x = ln1(x + drop(attention(x, mask, self.causal), deterministic))
            x = nn.with_logical_constraint(x, RESIDUAL)
            x = ln2(x + drop(mlp(x, deterministic), deterministic))
        return nn.with_logical_constraint(x, RESIDUAL)


class Encoder(nn.Module):
    """``depth`` ``EncoderBlock``s (``block_0`` ...), each optionally rematerialised.

    ``remat``: "none", "full" (recompute each block in the backward pass) or a
    ``jax.checkpoint_policies`` name from ``REMAT_POLICIES`` ("dots", "dots_no_batch").
    """

    depth: int
    num_heads: int
    mlp_dim: int
    act: str = "gelu"
    pre_norm: bool = True
    causal: bool = False
    dropout: float = 0.0
    ln_eps: float = 1e-5
    remat: str = "none"
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(
        self, x: jax.Array, mask: jax.Array | None = None, deterministic: bool = True
    ) -> jax.Array:
        if self.remat not in REMAT_POLICIES:
            raise ValueError(f"unknown remat {self.remat!r}; choose from {sorted(REMAT_POLICIES)}")
        block = EncoderBlock
        if self.remat != "none":
            block = nn.remat(block, policy=REMAT_POLICIES[self.remat], static_argnums=(3,))
        for i in range(self.depth):
            x = block(
                self.num_heads,
                self.mlp_dim,
                self.act,
                self.pre_norm,
                self.causal,
                self.dropout,
                self.ln_eps,
                self.dtype,
                name=f"block_{i}",
            )(x, mask, deterministic)
        return x


def posemb_sincos_2d(
    height: int, width: int, dim: int, temperature: float = 10_000.0
) -> np.ndarray:
    """``[height * width, dim]`` fixed 2-D sin-cos position embeddings (MoCo v3, big_vision):
    a quarter of the channels each for sin / cos of the row and of the column coordinate."""
    if dim % 4:
        raise ValueError(f"sin-cos 2-D position embeddings need width % 4 == 0, got {dim}")
    y, x = np.mgrid[:height, :width]
    omega = 1.0 / temperature ** (np.arange(dim // 4) / (dim // 4 - 1 or 1))
    y = y.reshape(-1)[:, None] * omega[None]
    x = x.reshape(-1)[:, None] * omega[None]
    return np.concatenate([np.sin(x), np.cos(x), np.sin(y), np.cos(y)], axis=1).astype(np.float32)


class MAPHead(nn.Module):
    """Multi-head attention pooling (Lee et al. 2019, big_vision's MAP head):
    ``[batch, length, width] -> [batch, width]`` with one learned query."""

    num_heads: int
    mlp_dim: int
    act: str = "gelu"
    ln_eps: float = 1e-5
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        batch, _, width = x.shape
        probe = self.param(
            "probe",
            nn.with_logical_partitioning(nn.initializers.xavier_uniform(), (None, None, "embed")),
            (1, 1, width),
        )
        head_dim = width // self.num_heads
        shape = (self.num_heads, head_dim)
        names = ("embed", "heads", "kv")
        query = jnp.broadcast_to(probe, (batch, 1, width)).astype(self.dtype)
        q = dense(shape, names, dtype=self.dtype, name="q")(query)
        k = dense(shape, names, dtype=self.dtype, name="k")(x)
        v = dense(shape, names, dtype=self.dtype, name="v")(x)
        heads = ("act_batch", "act_length", "act_heads", "act_kv")  # one sharding for all three
        q, k, v = (nn.with_logical_constraint(t, heads) for t in (q, k, v))
        pooled = dot_product_attention(
            q, k, v, None, False, attention_implementation(head_dim, self.dtype)
        )
        pooled = dense(width, ("heads", "kv", "embed"), dtype=self.dtype, name="out", contract=2)(
            pooled
        )
        y = layer_norm(self.ln_eps, self.dtype, name="ln")(pooled)
        pooled = pooled + MlpBlock(self.mlp_dim, self.act, dtype=self.dtype, name="mlp")(y)
        return pooled[:, 0]
