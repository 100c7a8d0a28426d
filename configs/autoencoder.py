"""A convolutional autoencoder: ``get_config(preset)`` for the trainer (``task="autoencoder"``,
``jaxalign.tasks.autoencoder``).

Presets (``--config=configs/autoencoder.py:<preset>``; no preset = ``digits``):

- ``digits``: pretrained on the images of ``digits_domains``' ``source_train`` (labels
  unread), probed on frozen latent codes like ``configs/simclr.py:digits``, with a picture of
  test digits above their reconstructions in ``images/`` at every eval, on CPU::

    jaxalign train --config=configs/autoencoder.py:digits --workdir=runs/ae_digits

- ``imagenet64``: a wider one on a TFDS ``imagenet2012`` at 64 px, for a GPU.
- ``tiny``: a few steps on 16 px images, for tests.

Keys (every preset has all of them; ``jaxalign.tasks.autoencoder.AutoencoderConfig`` and the
groups of ``jaxalign.schema`` give their types, ranges and rules). ``seed``, ``init_from``,
``optim``, ``train`` and ``mesh`` are as in ``configs/clip.py``; the task's own:

- ``model``: ``channels`` (one stride-2 stage each, both ways), ``latent_dim``, ``dtype``.
- ``data``: ``source``, ``name``, ``data_dir``, ``train_split``, ``image_size``, ``crop_area``
  (random crops of this much of the area), ``flip``, ``worker_count``, ``prefetch``,
  ``max_skipped_in_a_row``.
- ``evals``: the probes of ``configs/simclr.py``, and ``grid_examples`` (test images in the
  picture; 0: none) and ``grid_scale`` (each enlarged this many times).
"""

from __future__ import annotations

import ml_collections

from jaxalign import config as config_lib
from jaxalign.tasks import probe_evals, reconstruction

PRESETS: tuple[str, ...] = ("digits", "imagenet64", "tiny")


def digits() -> ml_collections.ConfigDict:
    """The CPU preset; every other preset starts from it."""
    config = ml_collections.ConfigDict()
    config.seed = 0
    config.task = "autoencoder"
    config.init_from = config_lib.init_from_off()
    config.model = ml_collections.ConfigDict(
        dict(channels=(32, 64), latent_dim=64, dtype="float32")
    )
    config.data = reconstruction.digits_data_group()
    config.optim = config_lib.optim_group(
        lr=2e-3, warmup_steps=20, min_lr_ratio=0.0, weight_decay=1e-4
    )
    config.train = config_lib.train_group(
        global_batch_size=128, steps=300, log_every=25, checkpoint_every=100, eval_every=300
    )
    config.evals = probe_evals.digits_group(grid_examples=10, grid_scale=3)
    config.mesh = config_lib.mesh_group()
    return config


def tiny(config: ml_collections.ConfigDict) -> None:
    """Seconds, for tests."""
    config.model.channels = (8, 16)
    config.model.latent_dim = 16
    config.data.image_size = 16
    config.data.prefetch = 0
    config.train.update(
        global_batch_size=16, steps=5, log_every=1, checkpoint_every=2, eval_every=5
    )
    config.evals.update(
        batch_size=16, max_train_examples=100, max_test_examples=48, shots=(1, 2), trials=2
    )
    config.evals.grid_examples = 4


def imagenet64(config: ml_collections.ConfigDict) -> None:
    """ImageNet at 64 px, for one GPU: four stages, a 512-wide code."""
    config.model.channels = (64, 128, 256, 256)
    config.model.latent_dim = 512
    config.model.dtype = "bfloat16"
    config.data.update(source="tfds", name="imagenet2012", data_dir="/data/tfds")
    config.data.update(train_split="train", image_size=64, worker_count=16)
    config.train.update(global_batch_size=1024, steps=50_000, log_every=100)
    config.train.update(checkpoint_every=2000, eval_every=10_000)
    config.optim.update(lr=1e-3, warmup_steps=1000, weight_decay=0.05)
    config.evals.update(train_split="train", test_split="validation", batch_size=1024)
    config.evals.update(max_train_examples=25_600, max_test_examples=10_000)


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """The preset named ``arg`` (``None``: ``"digits"``); see the module docstring.

    Raises:
      ValueError: an unknown preset; the message lists the choices.
    """
    preset = "digits" if arg is None or arg == "" else arg
    if preset not in PRESETS:
        raise ValueError(
            f"configs/autoencoder.py: unknown preset {preset!r}; choose from {PRESETS}"
        )
    config = digits()
    if preset == "tiny":
        tiny(config)
    elif preset == "imagenet64":
        imagenet64(config)
    return config
