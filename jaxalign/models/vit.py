"""Vision Transformer image tower (Dosovitskiy et al. 2021), pre-LayerNorm.

``[batch, height, width, channels]`` images -> ``[batch, width]`` pooled features, plus a dict
of named intermediates. Pooling: the class token ("cls", CLIP), the mean of the patch tokens
("mean") or multi-head attention pooling ("map", SigLIP). Position embeddings: learned ("learn")
or fixed 2-D sin-cos ("sincos2d"). ``ln_pre`` adds the LayerNorm CLIP applies before the
encoder. Sizes: ``VARIANTS`` / ``decode_variant("B/16")``.
"""

from __future__ import annotations

import re

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxalign.models.layers import RESIDUAL, Dtype, Encoder, MAPHead, layer_norm, posemb_sincos_2d

# name -> (width, depth, mlp_dim, num_heads), as in the ViT paper's Table 1 (+ Ti, S, tiny).
VARIANTS: dict[str, tuple[int, int, int, int]] = {
    "tiny": (128, 4, 512, 4),  # the CPU demo
    "Ti": (192, 12, 768, 3),
    "S": (384, 12, 1536, 6),
    "B": (768, 12, 3072, 12),
    "L": (1024, 24, 4096, 16),
    "H": (1280, 32, 5120, 16),
}


def decode_variant(variant: str) -> dict[str, int]:
    """``"B/16"`` -> ``{"width": 768, "depth": 12, "mlp_dim": 3072, "num_heads": 12,
    "patch_size": 16}``."""
    match = re.fullmatch(r"(\w+)/(\d+)", variant)
    if not match or match.group(1) not in VARIANTS:
        raise ValueError(
            f"unknown ViT variant {variant!r}; expected '<size>/<patch>' with size in "
            f"{sorted(VARIANTS)}, e.g. 'B/16'"
        )
    width, depth, mlp_dim, num_heads = VARIANTS[match.group(1)]
    return dict(
        width=width,
        depth=depth,
        mlp_dim=mlp_dim,
        num_heads=num_heads,
        patch_size=int(match.group(2)),
    )


class ViT(nn.Module):
    """``[batch, H, W, C] -> ([batch, width], intermediates)``.

    Intermediates: ``"patches"`` ``[batch, grid_h * grid_w, width]`` (embedded patches, before
    the encoder), ``"encoded"`` ``[batch, tokens, width]`` (after the final LayerNorm),
    ``"pooled"`` ``[batch, width]`` (the pooled feature; also the return value).

    ``keep``: ``[batch, K]`` int patch indices (row-major over the grid); only those patches
    (after their position embeddings, in that order, behind the class token if any) enter the
    encoder, so ``tokens = K (+ 1)``: a masked autoencoder's encoder (He et al., 2022).
    Activations: batch over ``act_batch`` (``data``, ``fsdp``).
    """

    patch_size: int = 16
    width: int = 768
    depth: int = 12
    mlp_dim: int = 3072
    num_heads: int = 12
    pool: str = "cls"
    posemb: str = "learn"
    ln_pre: bool = False
    patch_bias: bool = True
    act: str = "gelu"
    ln_eps: float = 1e-6
    dropout: float = 0.0
    remat: str = "none"
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(
        self, images: jax.Array, deterministic: bool = True, keep: jax.Array | None = None
    ) -> tuple[jax.Array, dict[str, jax.Array]]:
        chex.assert_rank(images, 4)
        _, height, width, _ = images.shape
        p = self.patch_size
        if height % p or width % p:
            raise ValueError(
                f"ViT: image size {height}x{width} is not divisible by patch_size {p} "
                f"(images {images.shape}, [batch, height, width, channels])"
            )
        if self.pool not in ("cls", "mean", "map"):
            raise ValueError(f"ViT.pool must be 'cls', 'mean' or 'map', got {self.pool!r}")
        if self.posemb not in ("learn", "sincos2d"):
            raise ValueError(f"ViT.posemb must be 'learn' or 'sincos2d', got {self.posemb!r}")
        out: dict[str, jax.Array] = {}
        x = nn.Conv(
            self.width,
            (p, p),
            strides=(p, p),
            padding="VALID",
            use_bias=self.patch_bias,
            dtype=self.dtype,
            param_dtype=jnp.float32,
            kernel_init=nn.with_logical_partitioning(
                nn.initializers.lecun_normal(), (None, None, "channels", "embed")
            ),
            bias_init=nn.with_logical_partitioning(nn.initializers.zeros_init(), ("embed",)),
            name="embedding",
        )(images.astype(self.dtype))
        batch, grid_h, grid_w, _ = x.shape
        x = x.reshape(batch, grid_h * grid_w, self.width)
        out["patches"] = x
        if self.pool == "cls":
            cls = self.param(
                "cls",
                nn.with_logical_partitioning(nn.initializers.normal(0.02), ("embed",)),
                (self.width,),
            )
            x = jnp.concatenate(
                [jnp.broadcast_to(cls.astype(x.dtype), (batch, 1, self.width)), x], 1
            )
        tokens = x.shape[1]
        if self.posemb == "learn":
            pos = self.param(
                "pos_embedding",
                nn.with_logical_partitioning(nn.initializers.normal(0.02), ("positions", "embed")),
                (tokens, self.width),
            )
        else:
            pos = jnp.asarray(posemb_sincos_2d(grid_h, grid_w, self.width))
            if self.pool == "cls":  # the class token has no position
                pos = jnp.concatenate([jnp.zeros((1, self.width)), pos], 0)
        x = x + pos.astype(x.dtype)[None]
        if keep is not None:
            chex.assert_shape(keep, (batch, None))
            first = int(self.pool == "cls")
            kept = jnp.take_along_axis(x[:, first:], keep[..., None], axis=1)
            x = jnp.concatenate([x[:, :first], kept], axis=1)
        x = nn.with_logical_constraint(x, RESIDUAL)
        if self.ln_pre:
            x = layer_norm(self.ln_eps, self.dtype, name="ln_pre")(x)
        x = nn.Dropout(self.dropout)(x, deterministic)
        x = Encoder(
            self.depth,
            self.num_heads,
            self.mlp_dim,
            act=self.act,
            dropout=self.dropout,
            ln_eps=self.ln_eps,
            remat=self.remat,
            dtype=self.dtype,
            name="encoder",
        )(x, None, deterministic)
        x = layer_norm(self.ln_eps, self.dtype, name="ln_post")(x)
        out["encoded"] = x
        if self.pool == "cls":
            pooled = x[:, 0]
        elif self.pool == "mean":
            pooled = jnp.mean(x, axis=1)
        else:
            pooled = MAPHead(
                self.num_heads, self.mlp_dim, self.act, self.ln_eps, self.dtype, name="map_head"
            )(x)
        out["pooled"] = pooled
        return pooled, out
