"""What image tasks share: the image tower a config names, the dataset on disk, and the config
pieces and rules for both.

- Config pieces: ``Preset``, ``Dtype``, ``Remat`` (the allowed values), ``IMAGE_FIELDS`` (the
  free group ``model.image``: fields of the ``ViT`` or ``ConvNet`` tower overriding the
  preset's), ``image_tower_problems`` (those fields belong to the preset's tower; the image
  side fits its stride), ``dataset_problems`` and ``check_dataset_on_disk`` (a built-in name
  exists; a TFDS dataset is prepared under ``data.data_dir``).
- ``eval_pipeline``: one pass over an eval split, as every image task's evals read it;
  ``Unlabelled``: a split whose records lost their labels (an unlabelled domain).
- ``ImageTaskConfig``: the config rules every image task shares (eval batch, data on disk).
- ``ImageDataset``: a config's ``data`` group on disk: built-in datasets are built on first use
  (process 0 first), splits open as random-access sources (records with undecoded images), and
  a split's class names come from its TFDS ``ClassLabel``.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Annotated, Any, Literal

import jax.numpy as jnp

from jaxalign import models
from jaxalign.models.layers import REMAT_POLICIES
from jaxalign.parallel.multihost import on_every_process
from jaxalign.schema import (
    ConfigError,
    ExperimentConfig,
    Group,
    MissingDataError,
    ModuleFields,
    shard_problems,
)

TOWER_MODULES = {"ConvNet": "cnn", "ViT": "vit", "ResNet": "resnet"}  # class -> its file
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
Preset = Literal[tuple(models.PRESETS)]  # type: ignore[valid-type]  # dual-encoder sizes
TowerPreset = Literal[tuple(models.TOWER_PRESETS)]  # type: ignore[valid-type]  # + ResNets
Dtype = Literal[tuple(DTYPES)]  # type: ignore[valid-type]
Remat = Literal[tuple(REMAT_POLICIES)]  # type: ignore[valid-type]
IMAGE_FIELDS = ModuleFields(
    (
        ("jaxalign.models.cnn", "ConvNet"),
        ("jaxalign.models.vit", "ViT"),
        ("jaxalign.models.resnet", "ResNet"),
    ),
    {"dtype": "model.dtype", "remat": "model.remat"},
)


class ImageModel(Group):
    """The image tower of a ``model`` group: ``preset`` (a ``jaxalign.models.TOWER_PRESETS``
    name), ``dtype`` (compute dtype), ``remat`` and ``image`` (tower fields overriding the
    preset's). A task's model group extends it."""

    preset: TowerPreset
    dtype: Dtype
    remat: Remat
    image: Annotated[dict[str, Any], IMAGE_FIELDS]


class ImageTaskConfig(ExperimentConfig):
    """An image task's config: ``evals.batch_size`` splits over the batch shards, and the
    ``data`` group's dataset is on disk. Its ``data`` and ``evals`` groups are the task's."""

    def topology_problems(self, mesh_shape) -> list[str]:
        return super().topology_problems(mesh_shape) + shard_problems(
            "evals.batch_size", self.evals.batch_size, mesh_shape
        )

    def check_data(self) -> None:
        super().check_data()
        check_dataset_on_disk(self.data)


def image_tower(model: Any) -> Any:
    """The image tower of a config's ``model`` group (``preset``, ``dtype``, ``remat``,
    ``image``)."""
    fields = dict(dtype=DTYPES[model.dtype], remat=model.remat, **dict(model.image))
    return models.build_image_tower(model.preset, **fields)


def image_tower_problems(model: Any, image_size: int) -> list[str]:
    """``model.image`` fields must belong to the preset's tower (``ConvNet`` for "cnn"
    presets, ``ResNet`` for ResNet presets, else ``ViT``); ``data.image_size`` must be a
    multiple of its stride. Lines relative to the whole config."""
    tower = type(models.build_image_tower(model.preset)).__name__
    module = ModuleFields(((f"jaxalign.models.{TOWER_MODULES[tower]}", tower),))
    choices = sorted(set(module.fields()) - {"dtype", "remat"})
    problems = [
        f"model.image.{key}={value!r}: not a field of the {tower} image tower of "
        f"model.preset={model.preset!r}; choose from {choices}"
        for key, value in model.image.items()
        if key not in choices
    ]
    if problems:
        return problems
    stride, what = models.image_stride(model.preset, dict(model.image))
    if image_size % stride:
        problems.append(
            f"data.image_size={image_size}: must be a multiple of {what} "
            f"(model.preset={model.preset!r})"
        )
    return problems


def dataset_problems(data: Any) -> list[str]:
    """A built-in ``data.name`` must exist; a TFDS source needs a name. Lines relative to the
    ``data`` group."""
    from jaxalign.data.builtin import BUILTIN

    if data.source == "builtin" and data.name not in BUILTIN:
        return [
            f"name={data.name!r}: not a built-in dataset; choose from {sorted(BUILTIN)} "
            "(or set data.source)"
        ]
    if data.source == "tfds" and not data.name:
        return ["name='': data.source='tfds' needs the dataset's name"]
    return []


def check_dataset_on_disk(data: Any) -> None:
    """Raises ``MissingDataError`` when a TFDS dataset is not under ``data.data_dir``."""
    if data.source != "tfds":
        return
    data_dir = os.path.expanduser(data.data_dir)
    path = os.path.join(data_dir, data.name.split(":")[0])
    prepared = os.path.isfile(os.path.join(data_dir, "dataset_info.json"))
    if not (os.path.isdir(path) or prepared):
        raise MissingDataError(
            f"config.data.name={data.name!r}: no TFDS dataset at {path!r} "
            f"(config.data.data_dir={data.data_dir!r})"
        )


def eval_pipeline(source: Any, config: Any, transform: Any, *, cache: Any = None) -> Any:
    """One pass over an eval split's ``source`` in batches of ``config.evals.batch_size`` (the
    last one smaller), no prefetch, bad examples skipped as in training (up to
    ``config.data.max_skipped_in_a_row`` in a row); ``cache``: an ``ExampleCache`` of the
    split kept from one eval to the next."""
    from jaxalign.data import make_pipeline

    return make_pipeline(
        source,
        seed=config.seed,
        global_batch_size=config.evals.batch_size,
        transform=transform,
        num_epochs=1,
        drop_remainder=False,
        prefetch=0,
        max_skipped_in_a_row=config.data.max_skipped_in_a_row,
        cache=cache,
    )


class Unlabelled:
    """A random-access ``source`` whose records lack the ``keys`` (labels): nothing
    downstream can read them. ``len`` and ``[i]`` as the source's."""

    def __init__(self, source: Any, keys: tuple[str, ...]):
        self.source, self.keys = source, frozenset(keys)

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return {k: v for k, v in self.source[index].items() if k not in self.keys}

    def __repr__(self) -> str:
        return f"Unlabelled({self.source!r}, without {sorted(self.keys)})"


class ImageDataset:
    """A config's ``data`` group (``source``, ``name``, ``data_dir``) on disk."""

    def __init__(self, data: Any):
        self.data = data

    @property
    def data_dir(self) -> str:
        return os.path.expanduser(self.data.data_dir)

    def prepare(self, extra: Callable[[], None] | None = None) -> None:
        """Builds a built-in dataset if it is not on disk yet (and runs ``extra``, e.g. the
        caption tokenizer's build), on every process (``on_every_process``)."""
        if self.data.source != "builtin":
            return
        from jaxalign.data import builtin

        def build() -> None:
            builtin.prepare(self.data.name, self.data_dir)
            if extra is not None:
                extra()

        on_every_process(build)

    def source(self, split: str, *, key: str, limit: int = 0) -> Any:
        """A random-access source of ``split`` (any TFDS split string, ``"validation[256:]"``;
        images undecoded), its first ``limit`` records when ``limit > 0``; ConfigError naming
        ``key`` when the split or the dataset is not there."""
        from jaxalign.data import Subset, tfds_source

        try:
            source = tfds_source(self.data.name, self.data_dir, split, decode_images=False)
        except (ValueError, FileNotFoundError) as error:
            raise ConfigError(f"config.{key}={split!r}: {error}") from None
        return Subset(source, range(min(limit, len(source)))) if limit else source

    def class_names(self, split: str, *, key: str, label_key: str = "label") -> list[str]:
        """The names of the ``label_key`` classes of ``split``'s dataset, in label order."""
        source = self.source(split, key=key)
        info = getattr(source, "dataset_info", None)
        features = info.features if info is not None else {}
        if label_key not in features or not hasattr(features[label_key], "names"):
            raise ConfigError(
                f"config.{key}={split!r}: dataset {self.data.name!r} has no {label_key!r} class "
                "feature to name the classes"
            )
        return list(features[label_key].names)
