"""Masked autoencoder (He et al., 2022): a ViT encoder on the visible patches and a light
Transformer decoder that predicts the pixels of every patch.

``(images [batch, S, S, 3], keep [batch, K], restore [batch, N]) -> [batch, N, p * p * 3]``
(``N`` patches of side ``p``; ``keep`` and ``restore`` from
``jaxalign.objectives.masking.random_patch_mask``). The encoder is an image tower
(``jaxalign.models.ViT``, parameters under ``encoder/``, so a classifier can take it as its
backbone); it sees only the ``K`` visible patches. The decoder embeds them to
``decoder_width``, appends one learned mask token per hidden patch, puts every token back in
grid order, adds fixed 2-D sin-cos positions, and runs ``decoder_depth`` blocks, a LayerNorm
and a linear map to pixels. ``features`` is the encoder on all patches (its pooled output).
"""

from __future__ import annotations

import math

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxalign.models.layers import Dtype, Encoder, dense, layer_norm, posemb_sincos_2d
from jaxalign.models.vit import ViT


def patchify(images: jax.Array, patch: int) -> jax.Array:
    """``[batch, S, S, C] -> [batch, (S / p) ** 2, p * p * C]``, patches in row-major grid
    order (the ViT's), each patch's pixels row-major then channel."""
    batch, height, width, channels = images.shape
    grid_h, grid_w = height // patch, width // patch
    x = images.reshape(batch, grid_h, patch, grid_w, patch, channels)
    return x.transpose(0, 1, 3, 2, 4, 5).reshape(batch, grid_h * grid_w, patch * patch * channels)


def unpatchify(patches: jax.Array, patch: int, channels: int = 3) -> jax.Array:
    """The inverse of ``patchify`` for square images."""
    batch, count, _ = patches.shape
    grid = math.isqrt(count)
    x = patches.reshape(batch, grid, grid, patch, patch, channels)
    return x.transpose(0, 1, 3, 2, 4, 5).reshape(batch, grid * patch, grid * patch, channels)


class MaskedAutoencoder(nn.Module):
    """See the module docstring."""

    encoder: ViT
    decoder_width: int = 128
    decoder_depth: int = 2
    decoder_heads: int = 4
    decoder_mlp_dim: int = 512
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(
        self,
        images: jax.Array,
        keep: jax.Array,
        restore: jax.Array,
        deterministic: bool = True,
    ) -> jax.Array:
        chex.assert_rank([images, keep, restore], [4, 2, 2])
        batch, count = restore.shape
        p = self.encoder.patch_size
        grid = images.shape[1] // p
        chex.assert_equal(grid * grid, count)
        _, out = self.encoder(images, deterministic, keep=keep)
        visible = out["encoded"][:, -keep.shape[1] :]  # without a class token
        x = dense(self.decoder_width, ("embed", "mlp"), dtype=self.dtype, name="decoder_embed")(
            visible
        )
        mask_token = self.param(
            "mask_token",
            nn.with_logical_partitioning(nn.initializers.normal(0.02), ("mlp",)),
            (self.decoder_width,),
        )
        hidden = jnp.broadcast_to(
            mask_token.astype(x.dtype), (batch, count - keep.shape[1], self.decoder_width)
        )
        x = jnp.take_along_axis(jnp.concatenate([x, hidden], 1), restore[..., None], axis=1)
        x = x + jnp.asarray(posemb_sincos_2d(grid, grid, self.decoder_width), x.dtype)[None]
        x = Encoder(
            self.decoder_depth,
            self.decoder_heads,
            self.decoder_mlp_dim,
            dtype=self.dtype,
            name="decoder",
        )(x, None, deterministic)
        x = layer_norm(1e-6, self.dtype, name="decoder_norm")(x)
        pixels = p * p * images.shape[-1]
        return dense(pixels, ("mlp", "embed"), dtype=self.dtype, name="decoder_pred")(x).astype(
            jnp.float32
        )

    def features(self, images: jax.Array) -> jax.Array:
        """``[batch, width]``: the encoder's pooled output over all patches."""
        return self.encoder(images, True)[0]
