"""Masked autoencoder (He et al., 2022; ``config.task="mae"``): a ViT encoder sees a random
``1 - objective.mask_ratio`` of each image's patches, a light decoder predicts the pixels of
all of them, the loss is the mean squared error over the hidden patches only. Keys and presets:
``configs/mae.py``.

Masks: ``objectives.masking.random_patch_mask`` with the step's key, so each example's mask is
fixed by ``(seed, step, example index)`` on any mesh; exactly ``kept_patches(N, ratio)``
patches of every example are visible. With ``objective.norm_pix_loss`` each target patch is
normalised by its own pixels' mean and variance (MAE's better-probing variant). Loss: the sum
over hidden patches of their mean squared pixel error, over the global count of hidden patches.

Data, probes (on the encoder's pooled output over all patches) and the picture (inputs, the
masked inputs with hidden patches grey, and the reconstructions with the visible patches
pasted back, as in the paper's figures): ``jaxalign.tasks.reconstruction``; the picture's masks
come from a fixed key (``PICTURE_KEY``).
"""

from __future__ import annotations

import functools
from typing import Any, Literal

import jax
import jax.numpy as jnp

from jaxalign import models
from jaxalign.data import CLIP_MEAN, CLIP_STD
from jaxalign.models.mae import patchify, unpatchify
from jaxalign.objectives.masking import random_patch_mask
from jaxalign.objectives.reconstruction import masked_mean_squared_error
from jaxalign.schema import Group, PositiveInt, Unit
from jaxalign.tasks import images
from jaxalign.tasks.base import register_task
from jaxalign.tasks.reconstruction import (
    ReconstructionData,
    ReconstructionEvals,
    ReconstructionTask,
)

PICTURE_KEY = 2**31 - 1  # fold_in(key(seed), PICTURE_KEY): the eval picture's masks
NORM_PIX_EPS = 1e-6


class MAEModel(images.ImageModel):
    decoder_width: PositiveInt
    decoder_depth: PositiveInt
    decoder_heads: PositiveInt
    decoder_mlp_dim: PositiveInt


class MAEObjective(Group):
    mask_ratio: Unit
    norm_pix_loss: bool


class MAEConfig(images.ImageTaskConfig):
    """The MAE task's config (keys documented in ``configs/mae.py``)."""

    task: Literal["mae"]
    model: MAEModel
    data: ReconstructionData
    objective: MAEObjective
    evals: ReconstructionEvals

    def rules(self) -> list[str]:
        problems = []
        if self.optim.micro_batches != 1:
            problems.append(f"optim.micro_batches={self.optim.micro_batches}: set it to 1")
        if not isinstance(models.build_image_tower(self.model.preset), models.ViT):
            problems.append(f"model.preset={self.model.preset!r}: MAE needs a ViT image tower")
            return problems
        if self.model.decoder_width % (4 * self.model.decoder_heads):
            problems.append(
                f"model.decoder_width={self.model.decoder_width}: must be a multiple of 4 x "
                f"model.decoder_heads ({self.model.decoder_heads}) (sin-cos positions, heads)"
            )
        return problems + images.image_tower_problems(self.model, self.data.image_size)


@register_task
class MAETask(ReconstructionTask):
    """See the module docstring."""

    name = "mae"
    Config = MAEConfig

    @functools.cached_property
    def model(self) -> models.MaskedAutoencoder:
        m = self.config.model
        return models.MaskedAutoencoder(
            images.image_tower(m),
            m.decoder_width,
            m.decoder_depth,
            m.decoder_heads,
            m.decoder_mlp_dim,
            dtype=images.DTYPES[m.dtype],
        )

    @property
    def num_patches(self) -> int:
        return (self.config.data.image_size // self.model.encoder.patch_size) ** 2

    def init(self, rng: jax.Array) -> Any:
        size = self.config.data.image_size
        keep, restore, _ = random_patch_mask(
            rng, 1, self.num_patches, self.config.objective.mask_ratio
        )
        return self.model.init(rng, jnp.zeros((1, size, size, 3), jnp.float32), keep, restore)

    def targets(self, images: jax.Array) -> jax.Array:
        """``[b, N, p * p * 3]`` patch pixels, each patch normalised with ``norm_pix_loss``."""
        target = patchify(images, self.model.encoder.patch_size)
        if self.config.objective.norm_pix_loss:
            mean = jnp.mean(target, axis=-1, keepdims=True)
            var = jnp.var(target, axis=-1, keepdims=True)
            target = (target - mean) / jnp.sqrt(var + NORM_PIX_EPS)
        return target

    def loss(self, params, model_state, batch, rng, step):
        """Mean squared pixel error over the hidden patches of the global batch; metrics: the
        same over the visible patches (``visible_loss``, not trained on)."""
        del step
        image = batch["image"]
        keep, restore, mask = random_patch_mask(
            rng, image.shape[0], self.num_patches, self.config.objective.mask_ratio
        )
        prediction = self.model.apply(
            {"params": params},
            image,
            keep,
            restore,
            False,
            rngs={"dropout": jax.random.fold_in(rng, 1)},
        )
        targets = self.targets(image)
        loss = masked_mean_squared_error(prediction, targets, mask, mesh=self.mesh)
        visible = masked_mean_squared_error(prediction, targets, 1 - mask, mesh=self.mesh)
        return loss, model_state, {"visible_loss": jax.lax.stop_gradient(visible)}

    def features(self, variables: Any, images: jax.Array) -> jax.Array:
        return self.model.apply(variables, images, method="features")

    def picture_rows(self, variables: Any, images: jax.Array) -> list[jax.Array]:
        """Inputs; inputs with the hidden patches grey; predictions in pixel space (a
        normalised patch given back its target's mean and spread) with the visible patches
        pasted back."""
        p = self.model.encoder.patch_size
        rng = jax.random.fold_in(jax.random.key(self.config.seed), PICTURE_KEY)
        keep, restore, mask = random_patch_mask(
            rng, images.shape[0], self.num_patches, self.config.objective.mask_ratio
        )
        prediction = self.model.apply(variables, images, keep, restore)
        patches = patchify(images, p)
        if self.config.objective.norm_pix_loss:
            mean = jnp.mean(patches, axis=-1, keepdims=True)
            std = jnp.sqrt(jnp.var(patches, axis=-1, keepdims=True) + NORM_PIX_EPS)
            prediction = prediction * std + mean
        grey = (0.5 - jnp.asarray(CLIP_MEAN)) / jnp.asarray(CLIP_STD)  # normalised mid-grey
        grey_patches = jnp.tile(grey, p * p)[None, None]
        hidden = mask[..., None] > 0
        masked = jnp.where(hidden, grey_patches, patches)
        pasted = jnp.where(hidden, prediction, patches)
        return [images, unpatchify(masked, p), unpatchify(pasted, p)]
