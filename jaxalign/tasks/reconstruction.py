"""What the reconstruction tasks (``autoencoder``, ``mae``) share beyond
``jaxalign.tasks.unlabelled_images``: the config groups of their data and evals, random crops
as the training transform, and the picture of their reconstructions that every eval writes.

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
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from jaxalign.data import CLIP_MEAN, CLIP_STD, ExampleKey, ImageTransform
from jaxalign.evals.image_grid import denormalize, image_grid
from jaxalign.schema import Count, PositiveInt
from jaxalign.tasks.probe_evals import ProbeEvals
from jaxalign.tasks.unlabelled_images import UnlabelledImageData, UnlabelledImageTask


class ReconstructionData(UnlabelledImageData):
    flip: bool


class ReconstructionEvals(ProbeEvals):
    grid_examples: Count
    grid_scale: PositiveInt


def digits_data_group(**values: Any) -> ml_collections.ConfigDict:
    """A config file's ``data`` group for pretraining on ``digits_domains``' ``source_train``
    images at 32 px: crops of 80-100% of the area, no flips (digits are not symmetric);
    ``values`` set or replace keys."""
    group = dict(
        source="builtin",
        name="digits_domains",
        data_dir="~/.cache/jaxalign/datasets",
        train_split="source_train",
        image_size=32,
        crop_area=(0.8, 1.0),
        flip=False,
        worker_count=0,
        prefetch=2,
        max_skipped_in_a_row=1000,
    )
    return ml_collections.ConfigDict({**group, **values})


class ReconstructionTask(UnlabelledImageTask):
    """Random crops (and flips) of unlabelled images, and the reconstruction picture; a
    subclass gives ``model``, ``loss``, ``features`` and ``picture_rows(variables, images)``."""

    def train_transform(self) -> ImageTransform:
        data = self.config.data
        return ImageTransform(data.image_size, train=True, scale=data.crop_area, flip=data.flip)

    def batch_spec(self) -> dict[str, jax.ShapeDtypeStruct]:
        batch, size = self.config.train.global_batch_size, self.config.data.image_size
        return {"image": jax.ShapeDtypeStruct((batch, size, size, 3), jnp.float32)}

    def picture_rows(self, variables: Any, images: jax.Array) -> list[jax.Array]:
        raise NotImplementedError

    @functools.cached_property
    def _picture_fn(self):
        """``picture_rows`` jitted once for the run (every eval reuses the compilation)."""
        return jax.jit(self.picture_rows)

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
        rows = self._picture_fn(variables, batch)
        pictures = [denormalize(np.asarray(row), CLIP_MEAN, CLIP_STD) for row in rows]
        return {"reconstructions": image_grid(pictures, scale=ev.grid_scale)}
