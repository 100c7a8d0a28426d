"""What the self-supervised image tasks (``simclr``, ``autoencoder``, ``mae``) share: training
on the images of ``data.train_split`` with every other field dropped (no label can reach the
loss), each example through the task's ``train_transform``, and the frozen-feature probes of
``jaxalign.tasks.probe_evals`` on the task's ``features``.
"""

from __future__ import annotations

import functools
from typing import Annotated, Any, Literal

import jax
import jax.numpy as jnp
from jax.sharding import Mesh
from pydantic import Field

from jaxalign.data import make_pipeline
from jaxalign.schema import Count, Group, PositiveInt
from jaxalign.tasks import images
from jaxalign.tasks.base import Task
from jaxalign.tasks.probe_evals import FrozenProbe

Area = Annotated[float, Field(gt=0.0, le=1.0)]


class UnlabelledImageData(Group):
    """The ``data`` keys every self-supervised image task has; a task's group adds its own
    augmentation keys (``crop_area``: the random crop's area range)."""

    source: Literal["builtin", "tfds"]
    name: str
    data_dir: str
    train_split: str
    image_size: PositiveInt
    crop_area: tuple[Area, Area]
    worker_count: Count
    prefetch: Count
    max_skipped_in_a_row: PositiveInt

    def rules(self) -> list[str]:
        problems = images.dataset_problems(self)
        if self.crop_area[0] > self.crop_area[1]:
            problems.append(f"crop_area={self.crop_area}: the smaller area comes first")
        return problems


class UnlabelledImageTask(Task):
    """A subclass gives ``model``, ``loss``, ``batch_spec``, ``train_transform()`` (``record
    -> example``) and ``features(variables, images [b, S, S, 3]) -> [b, F]``; ``init`` builds
    the model from one ``[1, S, S, 3]`` image."""

    def __init__(self, config: Any, mesh: Mesh):
        self.config, self.mesh = config, mesh
        self.dataset = images.ImageDataset(config.data)
        self.probe = FrozenProbe(config, self.dataset, mesh)

    def prepare_data(self) -> None:
        self.dataset.prepare()
        self.dataset.source(self.config.data.train_split, key="data.train_split")
        self.probe.check()

    def train_transform(self) -> Any:
        raise NotImplementedError

    def train_stream(self) -> Any:
        data = self.config.data
        source = self.dataset.source(data.train_split, key="data.train_split")
        return make_pipeline(
            images.Unlabelled(source, tuple(k for k in source[0] if k != "image")),
            seed=self.config.seed,
            global_batch_size=self.config.train.global_batch_size,
            transform=self.train_transform(),
            worker_count=data.worker_count,
            prefetch=data.prefetch,
            max_skipped_in_a_row=data.max_skipped_in_a_row,
        )

    def init(self, rng: jax.Array) -> Any:
        size = self.config.data.image_size
        return self.model.init(rng, jnp.zeros((1, size, size, 3), jnp.float32))

    def features(self, variables: Any, images: jax.Array) -> jax.Array:
        raise NotImplementedError

    @functools.cached_property
    def _features_fn(self):
        def features(variables, batch):
            return {"features": self.features(variables, batch["image"])}

        return jax.jit(features)

    def evaluate(self, variables: Any, *, progress: bool = False) -> dict[str, float]:
        """Linear probe and k-NN on the task's features (``jaxalign.tasks.probe_evals``)."""
        return self.probe.evaluate(self._features_fn, variables, progress=progress)
