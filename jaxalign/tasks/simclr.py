"""SimCLR (Chen et al., 2020): contrastive pretraining of an image encoder on two augmented
views per image, NT-Xent over the global batch (``config.task="simclr"``). Keys and presets:
``configs/simclr.py``.

Batches are ``{"view1": [B, S, S, 3], "view2": [B, S, S, 3]}`` float32, batch over (``data``,
``fsdp``): two ``SimCLRTransform`` views of each of ``B`` images of ``data.train_split``, drawn
from the example's key (so fixed by ``(seed, epoch, index)``); labels are never read. The
``2B`` views go through the network as one batch, so its batch norm (``jaxalign.models.resnet``
and the projection head) normalises over all ``2B`` views of every device and process, in
training and in the running averages, as SimCLR's TPU implementation does. Loss:
``objectives.nt_xent`` of the two views' unit projections at ``objective.temperature``; every
view's negatives are the other ``2B - 2`` views of the global batch.

Evals (``jaxalign.tasks.probe_evals``): linear probe and k-NN on the frozen encoder features
(before the projection head), full and few-shot.
"""

from __future__ import annotations

import functools
from typing import Any, Literal

import jax
import jax.numpy as jnp

from jaxalign import models, objectives
from jaxalign.data import SimCLRTransform
from jaxalign.parallel import batch_sharding
from jaxalign.schema import Group, NonNegativeFloat, PositiveFloat, PositiveInt
from jaxalign.tasks import images
from jaxalign.tasks.base import register_task
from jaxalign.tasks.probe_evals import ProbeEvals
from jaxalign.tasks.unlabelled_images import UnlabelledImageData, UnlabelledImageTask


class SimCLRModelConfig(images.ImageModel):
    projection_hidden: PositiveInt
    projection_dim: PositiveInt


class SimCLRData(UnlabelledImageData):
    color_strength: NonNegativeFloat
    blur: bool


class SimCLRObjective(Group):
    temperature: PositiveFloat


class SimCLRConfig(images.ImageTaskConfig):
    """The SimCLR task's config (keys documented in ``configs/simclr.py``)."""

    task: Literal["simclr"]
    model: SimCLRModelConfig
    data: SimCLRData
    objective: SimCLRObjective
    evals: ProbeEvals

    def rules(self) -> list[str]:
        problems = []
        if self.optim.micro_batches != 1:
            problems.append(
                f"optim.micro_batches={self.optim.micro_batches}: SimCLR's negatives and batch "
                "norm span the whole batch; set it to 1"
            )
        return problems + images.image_tower_problems(self.model, self.data.image_size)


@register_task
class SimCLRTask(UnlabelledImageTask):
    """Model, loss, data and evals of SimCLR (see the module docstring)."""

    name = "simclr"
    Config = SimCLRConfig

    def train_transform(self) -> SimCLRTransform:
        data = self.config.data
        return SimCLRTransform(
            data.image_size, strength=data.color_strength, scale=data.crop_area, blur=data.blur
        )

    @functools.cached_property
    def model(self) -> models.SimCLRModel:
        m = self.config.model
        return models.SimCLRModel(
            images.image_tower(m),
            m.projection_hidden,
            m.projection_dim,
            dtype=images.DTYPES[m.dtype],
        )

    def batch_spec(self) -> dict[str, jax.ShapeDtypeStruct]:
        batch, size = self.config.train.global_batch_size, self.config.data.image_size
        view = jax.ShapeDtypeStruct((batch, size, size, 3), jnp.float32)
        return {"view1": view, "view2": view}

    def objective_probe(self) -> tuple[Any, tuple[jax.ShapeDtypeStruct, ...]]:
        """NT-Xent alone on the two views' ``[B, projection_dim]`` float32 unit projections
        over the mesh's batch axes."""
        batch, dim = self.config.train.global_batch_size, self.config.model.projection_dim
        spec = jax.ShapeDtypeStruct((batch, dim), jnp.float32, sharding=batch_sharding(self.mesh))
        temperature = self.config.objective.temperature

        def objective(projections):
            return objectives.nt_xent(*projections, temperature, mesh=self.mesh)

        return objective, (spec, spec)

    def loss(self, params, model_state, batch, rng, step):
        """NT-Xent over the global batch's ``2B`` views; metrics: the mean cosine similarity of
        the two views' projections (``positive_similarity``)."""
        del rng, step
        views = jnp.concatenate([batch["view1"], batch["view2"]])  # [2B, S, S, 3]
        (z, _), model_state = self.model.apply(
            {"params": params, **model_state},
            views,
            deterministic=False,
            mutable=list(model_state),
        )
        z1, z2 = jnp.split(z, 2)
        loss = objectives.nt_xent(z1, z2, self.config.objective.temperature, mesh=self.mesh)
        similarity = jnp.mean(jnp.sum(z1 * z2, axis=-1))
        return loss, dict(model_state), {"positive_similarity": similarity}

    def features(self, variables: Any, images: jax.Array) -> jax.Array:
        return self.model.apply(variables, images, method="features")
