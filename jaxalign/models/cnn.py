"""A small CNN for small images (LeNet / DTN scale): the feature extractor of the
domain-adaptation tasks (digits -> blended digits, as MNIST -> MNIST-M in DANN, Ganin et al.
2016) and the image tower of the CPU demo's dual encoder (preset ``tiny-cnn``).

``[batch, H, W, C]`` -> ``[batch, features]``: two or more conv (k x k, ReLU, 2x2 max-pool)
stages, then a dense layer over the flattened map (so where things are survives). No batch
norm, so the features never depend on how the batch is split over devices.
"""

from __future__ import annotations

from collections.abc import Sequence

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxalign.models.layers import REMAT_POLICIES, Dtype, dense


class ConvStage(nn.Module):
    """``[batch, h, w, c] -> [batch, h / 2, w / 2, channels]``: conv, ReLU, 2x2 max-pool."""

    channels: int
    kernel_size: int
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        x = nn.Conv(
            self.channels,
            (self.kernel_size, self.kernel_size),
            padding="SAME",
            dtype=self.dtype,
            param_dtype=jnp.float32,
            kernel_init=nn.with_logical_partitioning(
                nn.initializers.lecun_normal(), (None, None, "channels", "conv_out")
            ),
            bias_init=nn.with_logical_partitioning(nn.initializers.zeros_init(), ("conv_out",)),
            name="conv",
        )(x)
        return nn.max_pool(nn.relu(x), (2, 2), strides=(2, 2))


class ConvNet(nn.Module):
    """``[batch, H, W, C] -> ([batch, features], intermediates)``.

    Intermediates: ``"conv"`` ``[batch, h, w, channels[-1]]`` (the last conv stage) and
    ``"pooled"`` ``[batch, features]``. H and W must be divisible by ``2 ** len(channels)``.
    """

    channels: Sequence[int] = (32, 64)
    features: int = 256
    kernel_size: int = 5
    remat: str = "none"  # a REMAT_POLICIES name: recompute each stage in the backward pass
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(
        self, images: jax.Array, deterministic: bool = True
    ) -> tuple[jax.Array, dict[str, jax.Array]]:
        del deterministic
        chex.assert_rank(images, 4)
        stride = 2 ** len(self.channels)
        if images.shape[1] % stride or images.shape[2] % stride:
            raise ValueError(
                f"ConvNet: image size {images.shape[1]}x{images.shape[2]} is not divisible by "
                f"{stride} (2 ** {len(self.channels)} pooling stages); images {images.shape}"
            )
        if self.remat not in REMAT_POLICIES:
            raise ValueError(f"unknown remat {self.remat!r}; choose from {sorted(REMAT_POLICIES)}")
        stage = ConvStage
        if self.remat != "none":
            stage = nn.remat(stage, policy=REMAT_POLICIES[self.remat])
        x = images.astype(self.dtype)
        for i, channels in enumerate(self.channels):
            x = stage(channels, self.kernel_size, self.dtype, name=f"conv_{i}")(x)
        out = {"conv": x}
        x = x.reshape(x.shape[0], -1)
        x = nn.relu(dense(self.features, ("mlp", "embed"), dtype=self.dtype, name="fc")(x))
        out["pooled"] = x
        return x, out
