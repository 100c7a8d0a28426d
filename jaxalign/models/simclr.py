"""SimCLR's network (Chen et al., 2020): any image tower and a projection head.

``[batch, H, W, C] -> ([batch, dim] unit projections, [batch, features] encoder features)``.
The head is SimCLR's two-layer MLP, dense -> batch norm -> ReLU -> dense (the projection the
loss reads; the features before it are what a probe reads). Parameters sit under ``encoder/``
and ``projection/`` (a classifier takes ``encoder`` as its ``backbone``); batch-norm statistics
in ``batch_stats``, over the global batch (see ``jaxalign.models.resnet``).
"""

from __future__ import annotations

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxalign.models.dual_encoder import l2_normalize
from jaxalign.models.layers import Dtype, dense
from jaxalign.models.resnet import BN_EPSILON, BN_MOMENTUM


class ProjectionHead(nn.Module):
    """``[batch, features] -> [batch, dim]``: dense (``hidden``), batch norm, ReLU, dense."""

    hidden: int
    dim: int
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, deterministic: bool = True) -> jax.Array:
        x = dense(self.hidden, ("embed", "mlp"), dtype=self.dtype, name="hidden")(x)
        x = nn.BatchNorm(
            use_running_average=deterministic,
            momentum=BN_MOMENTUM,
            epsilon=BN_EPSILON,
            dtype=self.dtype,
            param_dtype=jnp.float32,
            scale_init=nn.with_logical_partitioning(nn.initializers.ones_init(), ("mlp",)),
            bias_init=nn.with_logical_partitioning(nn.initializers.zeros_init(), ("mlp",)),
            name="norm",
        )(x)
        return dense(self.dim, ("mlp", "embed"), dtype=self.dtype, name="out")(nn.relu(x))


class SimCLRModel(nn.Module):
    """``images [batch, H, W, C] -> (z [batch, dim] float32, unit rows; features [batch, F])``.

    ``encoder``: an image tower (``images -> (features, intermediates)``). Call with
    ``deterministic=False`` and ``mutable=["batch_stats"]`` to train.
    """

    encoder: nn.Module
    hidden: int
    dim: int
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(
        self, images: jax.Array, deterministic: bool = True
    ) -> tuple[jax.Array, jax.Array]:
        chex.assert_rank(images, 4)
        features, _ = self.encoder(images, deterministic)
        z = ProjectionHead(self.hidden, self.dim, self.dtype, name="projection")(
            features, deterministic
        )
        return l2_normalize(z.astype(jnp.float32)), features

    def features(self, images: jax.Array) -> jax.Array:
        """``[batch, F]`` encoder features in evaluation mode (running statistics)."""
        return self.encoder(images, True)[0]
