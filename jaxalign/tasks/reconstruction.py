"""What the reconstruction tasks (``autoencoder``, ``mae``) share: unlabelled images in, the
config groups of their data and evals, the frozen-feature probes, and the picture of their
reconstructions that every eval writes.

Batches are ``{"image": [B, S, S, 3]}`` float32 (normalised with ``data.ImageTransform``'s
mean and std), batch over (``data``, ``fsdp``): random crops of ``data.crop_area`` of the area
(and flips with ``data.flip``) of ``data.train_split``'s images; no label is read.

Evals: ``jaxalign.tasks.probe_evals`` on the encoder's features; and ``eval_images``, a grid of
the first ``evals.grid_examples`` images of ``evals.test_split`` (rows chosen by the task, e.g.
inputs above reconstructions), each image enlarged ``evals.grid_scale`` times, which the trainer
writes as ``images/reconstructions_step<step>.png``.
"""

from __future__ import annotations

import functools
from typing import Annotated, Any, Literal

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh
from pydantic import Field

from jaxalign.data import CLIP_MEAN, CLIP_STD, ExampleKey, ImageTransform, make_pipeline
from jaxalign.evals.image_grid import denormalize, image_grid
from jaxalign.schema import Count, Group, PositiveInt
from jaxalign.tasks import images
from jaxalign.tasks.base import Task
from jaxalign.tasks.probe_evals import FrozenProbe, ProbeEvals

Area = Annotated[float, Field(gt=0.0, le=1.0)]


class ReconstructionData(Group):
    source: Literal["builtin", "tfds"]
    name: str
    data_dir: str
    train_split: str
    image_size: PositiveInt
    crop_area: tuple[Area, Area]
    flip: bool
    worker_count: Count
    prefetch: Count
    max_skipped_in_a_row: PositiveInt

    def rules(self) -> list[str]:
        problems = images.dataset_problems(self)
        if self.crop_area[0] > self.crop_area[1]:
            problems.append(f"crop_area={self.crop_area}: the smaller area comes first")
        return problems


class ReconstructionEvals(ProbeEvals):
    grid_examples: Count
    grid_scale: PositiveInt


class ReconstructionTask(Task):
    """Data, probes and pictures; a subclass gives ``model``, ``init``, ``loss``,
    ``features(variables, images) -> [b, F]`` and ``picture_rows(variables, images)``."""

    def __init__(self, config: Any, mesh: Mesh):
        self.config, self.mesh = config, mesh
        self.dataset = images.ImageDataset(config.data)
        self.probe = FrozenProbe(config, self.dataset, mesh)

    def prepare_data(self) -> None:
        self.dataset.prepare()
        self.dataset.source(self.config.data.train_split, key="data.train_split")
        self.probe.check()

    def train_stream(self) -> Any:
        data = self.config.data
        source = self.dataset.source(data.train_split, key="data.train_split")
        return make_pipeline(
            images.Unlabelled(source, tuple(k for k in source[0] if k != "image")),
            seed=self.config.seed,
            global_batch_size=self.config.train.global_batch_size,
            transform=ImageTransform(
                data.image_size, train=True, scale=data.crop_area, flip=data.flip
            ),
            worker_count=data.worker_count,
            prefetch=data.prefetch,
            max_skipped_in_a_row=data.max_skipped_in_a_row,
        )

    def batch_spec(self) -> dict[str, jax.ShapeDtypeStruct]:
        batch, size = self.config.train.global_batch_size, self.config.data.image_size
        return {"image": jax.ShapeDtypeStruct((batch, size, size, 3), jnp.float32)}

    def init(self, rng: jax.Array) -> Any:
        size = self.config.data.image_size
        return self.model.init(rng, jnp.zeros((1, size, size, 3), jnp.float32))

    def features(self, variables: Any, images: jax.Array) -> jax.Array:
        raise NotImplementedError

    def picture_rows(self, variables: Any, images: jax.Array) -> list[jax.Array]:
        raise NotImplementedError

    @functools.cached_property
    def _features_fn(self):
        def features(variables, batch):
            return {"features": self.features(variables, batch["image"])}

        return jax.jit(features)

    def evaluate(self, variables: Any, *, progress: bool = False) -> dict[str, float]:
        """Linear probe and k-NN on the encoder's features (``jaxalign.tasks.probe_evals``)."""
        return self.probe.evaluate(self._features_fn, variables, progress=progress)

    def eval_images(self, variables: Any) -> dict[str, np.ndarray]:
        """``{"reconstructions": [H, W, 3] uint8}``: ``picture_rows`` of the first
        ``evals.grid_examples`` test images, one row each (``{}`` when 0)."""
        ev = self.config.evals
        if not ev.grid_examples:
            return {}
        source = self.dataset.source(ev.test_split, key="evals.test_split")
        transform = ImageTransform(self.config.data.image_size, train=False)  # draws nothing
        count = min(ev.grid_examples, len(source))
        examples = [transform(source[i], ExampleKey(self.config.seed, 0, i)) for i in range(count)]
        batch = jnp.asarray(np.stack([e["image"] for e in examples]))
        rows = jax.jit(self.picture_rows)(variables, batch)
        pictures = [denormalize(np.asarray(row), CLIP_MEAN, CLIP_STD) for row in rows]
        return {"reconstructions": image_grid(pictures, scale=ev.grid_scale)}
