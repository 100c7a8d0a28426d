"""Image classifier: any image tower of ``jaxalign.models`` with a linear head.

``[batch, H, W, C]`` images -> ``[batch, num_classes]`` logits (float32), plus the tower's named
intermediates under ``backbone/`` and ``pre_logits`` (``[batch, features]``, the pooled feature
the head reads; what linear-probe and k-NN evals take). The tower sits under the parameter name
``backbone`` and the head under ``head``, so a dual encoder's ``image_tower`` maps onto
``backbone`` one to one (``config.init_from.params=("image_tower->backbone",)``).

``frozen_backbone`` makes a linear probe: the tower always runs as at evaluation (no dropout,
its batch statistics read, never updated) and gradients stop at its features, so the backward
pass never enters it. Batch over ``act_batch`` (``data``, ``fsdp``).
"""

from __future__ import annotations

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxalign.models.layers import dense


class Classifier(nn.Module):
    """``[batch, H, W, C] -> ([batch, num_classes], intermediates)``."""

    backbone: nn.Module
    num_classes: int
    frozen_backbone: bool = False

    @nn.compact
    def __call__(
        self, images: jax.Array, deterministic: bool = True
    ) -> tuple[jax.Array, dict[str, jax.Array]]:
        chex.assert_rank(images, 4)
        features, intermediates = self.backbone(
            images, deterministic=deterministic or self.frozen_backbone
        )
        if self.frozen_backbone:
            features = jax.lax.stop_gradient(features)
        features = features.astype(jnp.float32)
        logits = dense(self.num_classes, ("embed", "classes"), name="head")(features)
        out = {f"backbone/{k}": v for k, v in intermediates.items()}
        out["pre_logits"] = features
        return logits, out
