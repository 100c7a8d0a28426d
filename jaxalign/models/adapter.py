"""Domain-adaptation network: an image tower, a bottleneck, a classifier head and a domain
discriminator, in one parameter tree (the layout of DANN, Ganin et al. 2016, and DAN, Long et
al. 2015).

``[batch, H, W, C]`` images -> the tower's pooled features -> the bottleneck ``[batch,
bottleneck_dim]`` (dense, layer norm, ReLU: the features MMD and CORAL align and the
discriminator reads; the norm keeps their scale bounded, where TLlib's bottleneck uses batch
norm, so the reversed gradient cannot grow them, and is per example, so no statistic depends
on how the batch is split over devices)
-> the head's ``[batch, num_classes]`` logits. ``discriminate`` maps bottleneck features to
``[batch]`` domain logits (source = 1) through an MLP of two hidden ReLU layers; the task puts
``gradient_reversal`` in front of it. Parameters: ``backbone/`` (the tower; a CLIP run's
``image_tower`` maps onto it), ``bottleneck/``, ``head/``, ``discriminator/``. Batch over
``act_batch`` (``data``, ``fsdp``).
"""

from __future__ import annotations

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxalign.models.layers import dense, layer_norm


class DomainDiscriminator(nn.Module):
    """``[batch, features] -> [batch]`` domain logits: dense, ReLU, dense, ReLU, dense."""

    hidden: int = 256

    @nn.compact
    def __call__(self, features: jax.Array) -> jax.Array:
        chex.assert_rank(features, 2)
        x = features.astype(jnp.float32)
        for i in range(2):
            x = nn.relu(dense(self.hidden, ("embed", "mlp"), name=f"hidden_{i}")(x))
        return dense(1, ("mlp", None), name="out")(x)[:, 0]


class AdaptationNet(nn.Module):
    """``[batch, H, W, C] -> ([batch, num_classes] logits, [batch, bottleneck_dim] features)``;
    ``discriminate(features) -> [batch]``."""

    backbone: nn.Module
    num_classes: int
    bottleneck_dim: int = 256
    discriminator_hidden: int = 256

    def setup(self) -> None:
        self.bottleneck = dense(self.bottleneck_dim, ("embed", "mlp"))
        self.bottleneck_norm = layer_norm(1e-6, jnp.float32)
        self.head = dense(self.num_classes, ("mlp", "classes"))
        self.discriminator = DomainDiscriminator(self.discriminator_hidden)

    def __call__(
        self, images: jax.Array, deterministic: bool = True
    ) -> tuple[jax.Array, jax.Array]:
        chex.assert_rank(images, 4)
        pooled, _ = self.backbone(images, deterministic=deterministic)
        features = self.bottleneck_norm(self.bottleneck(pooled.astype(jnp.float32)))
        features = nn.relu(features)
        return self.head(features), features

    def discriminate(self, features: jax.Array) -> jax.Array:
        """``[batch, bottleneck_dim] -> [batch]`` domain logits (> 0: source)."""
        return self.discriminator(features)

    def init_all(self, images: jax.Array) -> jax.Array:
        """Runs every part once (for ``init``: the discriminator's parameters too)."""
        _, features = self(images)
        return self.discriminate(features)
