"""The image classification task: an image tower with a linear head, cross-entropy over the
global batch; trained from scratch, fine-tuned from a saved run, or as a linear probe of a
frozen tower. Its config schema lives here; the keys and presets are in
``configs/classify.py``.

Batches are ``{"image": [batch, S, S, 3] float32, "label": [batch] int32}``, batch over
(``data``, ``fsdp``). The classes are the names of the dataset's ``data.label_key``
``ClassLabel``. ``data.examples_per_class > 0`` trains on that many examples of each class
present in ``data.train_split`` (drawn by ``seed``: ``jaxalign.data.per_class_subset``).

Transfer: ``model.preset`` names the image tower (the same as a CLIP run's, with the same
``model.image`` fields), and ``init_from.params=("image_tower->backbone",)`` loads a CLIP run's
tower. ``model.backbone_lr_mult`` scales the tower's learning rate; 0 freezes it (no update, no
optimizer state, no backward pass through it): a linear probe trained by the loop.

Evals, every ``train.eval_every`` steps and at the end, on the last step's parameters (no
selection among checkpoints): for each split in ``evals.splits``, top-1 / top-5 accuracy of the
head (``eval/<split>/top1``), and with ``evals.knn_k > 0`` the weighted k-NN accuracy of the
frozen features (``jaxalign.evals.knn_accuracy``) with the training examples as the memory bank.
"""

from __future__ import annotations

import functools
from typing import Annotated, Any, Literal

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh
from pydantic import Field

from jaxalign import evals, models
from jaxalign.data import ImageTransform, make_pipeline, per_class_subset
from jaxalign.schema import (
    ConfigError,
    Count,
    Group,
    PositiveInt,
    Unit,
)
from jaxalign.tasks import images
from jaxalign.tasks.base import ParamGroup, Task, register_task

# Training augmentation when data.augment: a random crop of 80-100% of the area, and flips.
AUGMENT_SCALE = (0.8, 1.0)


class ClassifyModel(images.ImageModel):
    backbone_lr_mult: Annotated[float, Field(ge=0.0)]


class ClassifyData(Group):
    source: Literal["builtin", "tfds"]
    name: str
    data_dir: str
    train_split: str
    label_key: str
    examples_per_class: Count
    image_size: PositiveInt
    augment: bool
    worker_count: Count
    prefetch: Count
    max_skipped_in_a_row: PositiveInt

    def rules(self) -> list[str]:
        return images.dataset_problems(self)


class ClassifyObjective(Group):
    label_smoothing: Unit


class ClassifyEvals(Group):
    splits: tuple[str, ...]
    batch_size: PositiveInt
    max_examples: Count
    knn_k: Count


class ClassifyConfig(images.ImageTaskConfig):
    """The classification task's config (keys documented in ``configs/classify.py``)."""

    task: Literal["classify"]
    model: ClassifyModel
    data: ClassifyData
    objective: ClassifyObjective
    evals: ClassifyEvals

    def rules(self) -> list[str]:
        problems = []
        if self.optim.micro_batches != 1:
            problems.append(
                f"optim.micro_batches={self.optim.micro_batches}: the classify task has no "
                "gradient accumulation; set it to 1"
            )
        return problems + images.image_tower_problems(self.model, self.data.image_size)


@register_task
class ClassifyTask(Task):
    """Model, loss, data and evals of image classification (see the module docstring)."""

    name = "classify"
    Config = ClassifyConfig

    def __init__(self, config: ClassifyConfig, mesh: Mesh):
        self.config, self.mesh = config, mesh
        self.dataset = images.ImageDataset(config.data)

    # --- data ---------------------------------------------------------------------------------

    def prepare_data(self) -> None:
        """Builds a built-in dataset if needed, reads the class names, and opens every eval
        split (ConfigError naming the key when one is missing)."""
        self.dataset.prepare()
        if not self.class_names:
            raise ConfigError(f"config.data.label_key={self.config.data.label_key!r}: no classes")
        for split in self.config.evals.splits:
            self.dataset.source(split, key="evals.splits")

    @functools.cached_property
    def class_names(self) -> list[str]:
        data = self.config.data
        return self.dataset.class_names(
            data.train_split, key="data.train_split", label_key=data.label_key
        )

    @functools.cached_property
    def train_source(self) -> Any:
        """The training records: the whole split, or ``examples_per_class`` of each class."""
        data = self.config.data
        source = self.dataset.source(data.train_split, key="data.train_split")
        if data.examples_per_class:
            source = per_class_subset(
                source,
                per_class=data.examples_per_class,
                seed=self.config.seed,
                label_key=data.label_key,
            )
        return source

    def transform(self, *, train: bool) -> ImageTransform:
        augment = train and self.config.data.augment
        return ImageTransform(
            self.config.data.image_size,
            train=augment,
            scale=AUGMENT_SCALE,
            flip=augment,
            label_key=self.config.data.label_key,
        )

    def train_stream(self) -> Any:
        data = self.config.data
        return make_pipeline(
            self.train_source,
            seed=self.config.seed,
            global_batch_size=self.config.train.global_batch_size,
            transform=self.transform(train=True),
            worker_count=data.worker_count,
            prefetch=data.prefetch,
            max_skipped_in_a_row=data.max_skipped_in_a_row,
        )

    # --- model ----------------------------------------------------------------------------------

    @functools.cached_property
    def model(self) -> models.Classifier:
        return models.Classifier(
            images.image_tower(self.config.model),
            num_classes=len(self.class_names),
            frozen_backbone=self.config.model.backbone_lr_mult == 0,
        )

    def batch_spec(self) -> dict[str, jax.ShapeDtypeStruct]:
        batch, size = self.config.train.global_batch_size, self.config.data.image_size
        return {
            "image": jax.ShapeDtypeStruct((batch, size, size, 3), jnp.float32),
            "label": jax.ShapeDtypeStruct((batch,), jnp.int32),
        }

    def init(self, rng: jax.Array) -> Any:
        size = self.config.data.image_size
        return self.model.init(rng, jnp.zeros((1, size, size, 3), jnp.float32))

    def apply(self, variables: Any, image: jax.Array, *, rng: jax.Array | None = None) -> Any:
        """``((logits [b, classes], intermediates), model state)``: with ``rng`` (training)
        dropout is on and the non-parameter collections are updated (batch statistics)."""
        train = rng is not None
        collections = [k for k in variables if k != "params"]
        kwargs = dict(deterministic=not train, rngs={"dropout": rng} if train else None)
        if train and collections:
            out, state = self.model.apply(variables, image, mutable=collections, **kwargs)
            return out, dict(state)
        out = self.model.apply(variables, image, **kwargs)
        return out, {k: variables[k] for k in collections}

    def loss(self, params, model_state, batch, rng, step):
        """Cross-entropy (with ``objective.label_smoothing``) averaged over the global batch;
        metrics: the batch's top-1 accuracy."""
        del step
        (logits, _), model_state = self.apply(
            {"params": params, **model_state}, batch["image"], rng=rng
        )
        num_classes = logits.shape[-1]
        targets = optax.smooth_labels(
            jax.nn.one_hot(batch["label"], num_classes), self.config.objective.label_smoothing
        )
        loss = jnp.mean(optax.softmax_cross_entropy(logits, targets))
        accuracy = jnp.mean(jnp.argmax(logits, -1) == batch["label"])
        return loss, model_state, {"accuracy": accuracy}

    def param_groups(self) -> tuple[ParamGroup, ...]:
        mult = self.config.model.backbone_lr_mult
        return () if mult == 1 else (ParamGroup("^backbone/", mult),)

    # --- evals ----------------------------------------------------------------------------------

    @functools.cached_property
    def _predict_fn(self):
        def predict(variables, batch):
            (logits, out), _ = self.apply(variables, batch["image"])
            return {"logits": logits, "features": out["pre_logits"]}

        return jax.jit(predict)

    def _run(self, variables: Any, source: Any, name: str, progress: bool) -> dict[str, Any]:
        ev = self.config.evals
        pipeline = images.eval_pipeline(source, self.config, self.transform(train=False))
        return evals.embed_dataset(
            self._predict_fn,
            pipeline,
            self.mesh,
            global_batch_size=ev.batch_size,
            keep=("label",),
            params=variables,
            progress=progress,
            desc=f"classify ({name})",
        )

    def evaluate(self, variables: Any, *, progress: bool = False) -> dict[str, float]:
        """Per split of ``evals.splits`` (its first ``evals.max_examples``; all when 0):
        ``<split>/top1``, ``<split>/top5`` (ties counted against the true class) and, with
        ``evals.knn_k``, ``<split>/knn_top1``."""
        ev, num_classes = self.config.evals, len(self.class_names)
        bank = self._run(variables, self.train_source, "train", progress) if ev.knn_k else None
        results: dict[str, float] = {}
        for split in ev.splits:
            source = self.dataset.source(split, key="evals.splits", limit=ev.max_examples)
            out = self._run(variables, source, split, progress)
            logits, labels = out["logits"], out["label"]
            true = np.take_along_axis(logits, labels[:, None], axis=1)
            rank = np.sum(logits >= true, axis=1) - 1  # ties counted against the true class
            for k in (1, 5):
                if k <= num_classes:
                    results[f"{split}/top{k}"] = float(np.mean(rank < k))
            if bank is not None:
                knn = evals.knn_accuracy(
                    bank["features"],
                    bank["label"],
                    out["features"],
                    labels,
                    num_classes=num_classes,
                    k=ev.knn_k,
                )
                results[f"{split}/knn_top1"] = knn["knn_top1"]
        return results
