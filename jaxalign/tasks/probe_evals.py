"""Frozen-feature evals of an image encoder, as the self-supervised tasks run them: the
``evals`` group of their configs and the code that embeds two labelled splits and scores them.

Protocol (``jaxalign.evals.probe_suite``, stated in full in ``docs/results/self_supervised.md``):
the encoder's features (evaluation mode: batch norm reads its running statistics) of the first
``evals.max_train_examples`` of ``evals.train_split`` (all when 0) and of ``evals.test_split``
(the first ``evals.max_test_examples``), images resized and centre-cropped with no
augmentation; a linear probe (logistic regression, ``C`` by 5-fold cross-validation on the
training features only) and a weighted k-NN (cosine, ``knn_k`` neighbours, votes
``exp(sim / knn_temperature)``) on all training features, then on ``evals.trials`` draws of
``k`` examples per class for each ``k`` of ``evals.shots``. Test labels are read only to score.

Metrics (``eval/`` prefixed by the trainer): ``probe/linear_top1``, ``probe/knn_top1``,
``probe/<k>shot/linear_top1`` (mean over the draws), ``..._std``, the same for ``knn``.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jax
import ml_collections
import numpy as np
from jax.sharding import Mesh

from jaxalign import evals
from jaxalign.data import ImageTransform
from jaxalign.schema import ConfigError, Count, Group, PositiveFloat, PositiveInt
from jaxalign.tasks import images


class ProbeEvals(Group):
    """The ``evals`` group of a self-supervised image task (see the module docstring)."""

    train_split: str
    test_split: str
    label_key: str
    batch_size: PositiveInt
    max_train_examples: Count
    max_test_examples: Count
    shots: tuple[PositiveInt, ...]
    trials: PositiveInt
    knn_k: PositiveInt
    knn_temperature: PositiveFloat


class FrozenProbe:
    """Embeds ``evals.train_split`` and ``evals.test_split`` with a features function and
    scores them (``probe_suite``).

    Args:
      config: a task config with ``seed``, ``data`` (``image_size``, ``max_skipped_in_a_row``)
        and ``evals`` (``ProbeEvals``).
      dataset: the task's ``images.ImageDataset``.
      mesh: the mesh the features function runs on (batch over ``data``, ``fsdp``).
    """

    def __init__(self, config: Any, dataset: images.ImageDataset, mesh: Mesh):
        self.config, self.dataset, self.mesh = config, dataset, mesh

    def check(self) -> None:
        """Opens both splits and reads the class names: ConfigError naming the key if not."""
        ev = self.config.evals
        self.dataset.source(ev.train_split, key="evals.train_split")
        self.dataset.source(ev.test_split, key="evals.test_split")
        if not self.class_names:
            raise ConfigError(f"config.evals.label_key={ev.label_key!r}: no classes")

    @functools.cached_property
    def class_names(self) -> list[str]:
        ev = self.config.evals
        return self.dataset.class_names(
            ev.train_split, key="evals.train_split", label_key=ev.label_key
        )

    def embed(
        self,
        features_fn: Callable[[Any, dict[str, jax.Array]], dict[str, jax.Array]],
        variables: Any,
        key: str,
        limit: int,
        progress: bool,
    ) -> dict[str, np.ndarray]:
        """``{"features": [n, F], "label": [n]}`` of the first ``limit`` examples of the split
        ``evals.<key>`` names; ``features_fn(variables, {"image": [b, S, S, 3]}) ->
        {"features": [b, F]}``, jitted."""
        config, ev = self.config, self.config.evals
        split = getattr(ev, key)
        source = self.dataset.source(split, key=f"evals.{key}", limit=limit)
        transform = ImageTransform(config.data.image_size, train=False, label_key=ev.label_key)
        return evals.embed_dataset(
            features_fn,
            images.eval_pipeline(source, config, transform),
            self.mesh,
            global_batch_size=ev.batch_size,
            keep=("label",),
            params=variables,
            progress=progress,
            desc=f"probe features ({split})",
        )

    def evaluate(
        self, features_fn: Callable[..., Any], variables: Any, *, progress: bool = False
    ) -> dict[str, float]:
        """``probe/...`` metrics (see the module docstring) of the features ``features_fn``
        computes from ``variables``."""
        ev = self.config.evals
        train = self.embed(features_fn, variables, "train_split", ev.max_train_examples, progress)
        test = self.embed(features_fn, variables, "test_split", ev.max_test_examples, progress)
        scores = evals.probe_suite(
            train["features"].reshape(len(train["label"]), -1),
            train["label"],
            test["features"].reshape(len(test["label"]), -1),
            test["label"],
            num_classes=len(self.class_names),
            shots=ev.shots,
            trials=ev.trials,
            seed=self.config.seed,
            knn_k=ev.knn_k,
            knn_temperature=ev.knn_temperature,
        )
        return {f"probe/{name}": value for name, value in scores.items()}


def digits_group(**values: Any) -> ml_collections.ConfigDict:
    """A config file's ``evals`` group probing ``digits_domains``' source domain
    (``source_train`` -> ``source_test``, every example, 1 / 5 / 10 / 25 shots, 3 draws, k-NN
    with k = 20 at temperature 0.07); ``values`` set or replace keys."""
    group = dict(
        train_split="source_train",
        test_split="source_test",
        label_key="label",
        batch_size=256,
        max_train_examples=0,
        max_test_examples=0,
        shots=(1, 5, 10, 25),
        trials=3,
        knn_k=20,
        knn_temperature=0.07,
    )
    return ml_collections.ConfigDict({**group, **values})


def pixel_features(_: Any, batch: dict[str, jax.Array]) -> dict[str, jax.Array]:
    """The raw-pixel baseline's features: each image flattened, ``[b, S * S * 3]``."""
    image = batch["image"]
    return {"features": image.reshape(image.shape[0], -1)}
