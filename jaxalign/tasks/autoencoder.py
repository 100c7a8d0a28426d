"""A convolutional autoencoder (``config.task="autoencoder"``): images are encoded to a latent
vector and decoded back, the loss their mean squared error over every pixel of the global batch
(normalised pixel values). Keys and presets: ``configs/autoencoder.py``.

Data, probes and the reconstruction picture (inputs above their reconstructions):
``jaxalign.tasks.reconstruction``; the probes read the latent code.
"""

from __future__ import annotations

import functools
from typing import Any, Literal

import jax

from jaxalign import models
from jaxalign.objectives.reconstruction import masked_mean_squared_error
from jaxalign.schema import Group, PositiveInt
from jaxalign.tasks import images
from jaxalign.tasks.base import register_task
from jaxalign.tasks.reconstruction import (
    ReconstructionData,
    ReconstructionEvals,
    ReconstructionTask,
)


class AutoencoderModel(Group):
    channels: tuple[PositiveInt, ...]
    latent_dim: PositiveInt
    dtype: images.Dtype


class AutoencoderConfig(images.ImageTaskConfig):
    """The autoencoder task's config (keys documented in ``configs/autoencoder.py``)."""

    task: Literal["autoencoder"]
    model: AutoencoderModel
    data: ReconstructionData
    evals: ReconstructionEvals

    def rules(self) -> list[str]:
        problems = []
        if self.optim.micro_batches != 1:
            problems.append(f"optim.micro_batches={self.optim.micro_batches}: set it to 1")
        if not self.model.channels:
            problems.append("model.channels=(): give at least one stage")
        stride = 2 ** len(self.model.channels)
        if self.data.image_size % stride:
            problems.append(
                f"data.image_size={self.data.image_size}: must be a multiple of {stride} "
                f"(2 ** len(model.channels), model.channels={self.model.channels})"
            )
        return problems


@register_task
class AutoencoderTask(ReconstructionTask):
    """See the module docstring."""

    name = "autoencoder"
    Config = AutoencoderConfig

    @functools.cached_property
    def model(self) -> models.ConvAutoencoder:
        m = self.config.model
        return models.ConvAutoencoder(
            self.config.data.image_size, m.channels, m.latent_dim, images.DTYPES[m.dtype]
        )

    def loss(self, params, model_state, batch, rng, step):
        """Mean squared error of the reconstruction over the global batch's pixels."""
        del rng, step
        image = batch["image"]
        reconstruction, _ = self.model.apply({"params": params}, image)
        pixels = (image.shape[0], -1, image.shape[-1])  # [B, H * W, C]
        loss = masked_mean_squared_error(
            reconstruction.reshape(pixels), image.reshape(pixels), mesh=self.mesh
        )
        return loss, model_state, {}

    def features(self, variables: Any, images: jax.Array) -> jax.Array:
        return self.model.apply(variables, images, method="encode")

    def picture_rows(self, variables: Any, images: jax.Array) -> list[jax.Array]:
        return [images, self.model.apply(variables, images)[0]]
