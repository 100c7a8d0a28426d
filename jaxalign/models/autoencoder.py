"""A convolutional autoencoder: images -> a latent vector -> images.

Encoder: 3x3 stride-2 convolutions with ReLU (each halving the map), then a dense layer to the
``[batch, latent_dim]`` code (the features a probe reads). Decoder: a dense layer back to the
smallest map, 3x3 stride-2 transposed convolutions with ReLU (each doubling it), then a 3x3
convolution to the image's channels, no activation: the output lives where the (normalised)
input does. ``[batch, S, S, 3] -> ([batch, S, S, 3], [batch, latent_dim])``; ``S`` must be a
multiple of ``2 ** len(channels)``.
"""

from __future__ import annotations

from collections.abc import Sequence

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxalign.models.layers import Dtype, dense

KERNEL_NAMES = (None, None, "channels", "conv_out")


def _conv(cls, features: int, strides: int, dtype: Dtype, name: str) -> nn.Module:
    return cls(
        features,
        (3, 3),
        strides=(strides, strides),
        padding="SAME",
        dtype=dtype,
        param_dtype=jnp.float32,
        kernel_init=nn.with_logical_partitioning(nn.initializers.lecun_normal(), KERNEL_NAMES),
        bias_init=nn.with_logical_partitioning(nn.initializers.zeros_init(), ("conv_out",)),
        name=name,
    )


class ConvAutoencoder(nn.Module):
    """See the module docstring. ``image_size`` fixes the decoder's first map."""

    image_size: int
    channels: Sequence[int] = (32, 64)
    latent_dim: int = 128
    dtype: Dtype = jnp.float32

    def setup(self) -> None:
        stride = 2 ** len(self.channels)
        if self.image_size % stride:
            raise ValueError(
                f"ConvAutoencoder: image_size {self.image_size} is not a multiple of {stride} "
                f"(2 ** {len(self.channels)} stride-2 stages)"
            )
        self.side = self.image_size // stride
        self.down = [
            _conv(nn.Conv, c, 2, self.dtype, f"down_{i}") for i, c in enumerate(self.channels)
        ]
        self.to_latent = dense(self.latent_dim, ("embed", "mlp"), dtype=self.dtype)
        self.from_latent = dense(
            self.side * self.side * self.channels[-1], ("mlp", "embed"), dtype=self.dtype
        )
        ups = [*reversed(self.channels[:-1]), self.channels[0]]
        self.up = [_conv(nn.ConvTranspose, c, 2, self.dtype, f"up_{i}") for i, c in enumerate(ups)]
        self.to_image = _conv(nn.Conv, 3, 1, self.dtype, "to_image")

    def encode(self, images: jax.Array) -> jax.Array:
        """``[batch, S, S, C] -> [batch, latent_dim]``."""
        chex.assert_shape(images, (None, self.image_size, self.image_size, None))
        x = images.astype(self.dtype)
        for conv in self.down:
            x = nn.relu(conv(x))
        return self.to_latent(x.reshape(x.shape[0], -1))

    def decode(self, latent: jax.Array) -> jax.Array:
        """``[batch, latent_dim] -> [batch, S, S, 3]``."""
        x = nn.relu(self.from_latent(latent))
        x = x.reshape(latent.shape[0], self.side, self.side, self.channels[-1])
        for conv in self.up:
            x = nn.relu(conv(x))
        return self.to_image(x).astype(jnp.float32)

    def __call__(self, images: jax.Array) -> tuple[jax.Array, jax.Array]:
        latent = self.encode(images)
        return self.decode(latent), latent
