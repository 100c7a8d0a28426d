"""SimCLR pretraining of an image encoder: ``get_config(preset)`` for the trainer
(``task="simclr"``, ``jaxalign.tasks.simclr``).

Presets (``--config=configs/simclr.py:<preset>``; no preset = ``digits``):

- ``digits``: a small ResNet (``model.preset="resnet-tiny"``, CIFAR stem, global batch norm)
  pretrained on the images of ``digits_domains``' ``source_train`` (labels unread), then
  probed on frozen features (linear probe and k-NN, full and 1 / 5 / 10 / 25 shots per class;
  ``source_train`` -> ``source_test``), on CPU::

    jaxalign train --config=configs/simclr.py:digits --workdir=runs/simclr_digits

- ``resnet50_imagenet``: SimCLR's ImageNet recipe (Chen et al., 2020: ResNet-50, batch 4096,
  LARS at 0.3 x batch / 256, weight decay 1e-6, temperature 0.1, 10 warmup epochs, 100
  epochs; a 2048 -> 128 projection head) on a TFDS ``imagenet2012`` prepared under
  ``data.data_dir``, bfloat16, for TPU pods and GPU clusters. Its evals probe 25,600 training
  images; the paper's full linear evaluation is a ``configs/classify.py`` run on the frozen
  encoder (``init_from.params=("encoder->backbone",)``, ``model.backbone_lr_mult=0``).

- ``tiny``: a few steps of a very small ResNet, for tests.

Keys (every preset has all of them; ``jaxalign.tasks.simclr.SimCLRConfig`` and the groups of
``jaxalign.schema`` give their types, ranges and rules). ``seed``, ``init_from``, ``optim``
(``name="lars"`` for LARS), ``train`` and ``mesh`` are as in ``configs/clip.py``; the task's own:

- ``model``: ``preset`` (a ``jaxalign.models.TOWER_PRESETS`` name: ``resnet-tiny``,
  ``resnet18``, ``resnet50``, or a dual-encoder preset's image tower), ``dtype``, ``remat``,
  ``image`` (tower fields overriding the preset's), ``projection_hidden`` and
  ``projection_dim`` (the head: dense, batch norm, ReLU, dense).
- ``data``: ``source`` (``builtin`` | ``tfds``), ``name``, ``data_dir``, ``train_split`` (its
  images only), ``image_size``, ``crop_area`` (the random resized crop's area range),
  ``color_strength`` (SimCLR's ``s``: 0.8s brightness / contrast / saturation, 0.2s hue),
  ``blur`` (gaussian blur, p = 0.5), ``worker_count``, ``prefetch``, ``max_skipped_in_a_row``.
- ``objective``: ``temperature`` (NT-Xent's tau).
- ``evals`` (``jaxalign.tasks.probe_evals``): ``train_split`` / ``test_split`` (labelled: the
  probe's training and test features), ``label_key``, ``batch_size``, ``max_train_examples`` /
  ``max_test_examples`` (0: all), ``shots`` (examples per class of the few-shot probes),
  ``trials`` (draws per shot count), ``knn_k``, ``knn_temperature``.
"""

from __future__ import annotations

import ml_collections

from jaxalign import config as config_lib
from jaxalign.tasks import probe_evals

PRESETS: tuple[str, ...] = ("digits", "resnet50_imagenet", "tiny")


def digits() -> ml_collections.ConfigDict:
    """The CPU preset; every other preset starts from it."""
    config = ml_collections.ConfigDict()
    config.seed = 0
    config.task = "simclr"
    config.init_from = config_lib.init_from_off()

    config.model = ml_collections.ConfigDict()
    config.model.preset = "resnet-tiny"
    config.model.dtype = "float32"
    config.model.remat = "none"
    config.model.image = ml_collections.ConfigDict()
    config.model.projection_hidden = 128
    config.model.projection_dim = 64

    config.data = ml_collections.ConfigDict()
    config.data.source = "builtin"
    config.data.name = "digits_domains"
    config.data.data_dir = "~/.cache/jaxalign/datasets"
    config.data.train_split = "source_train"
    config.data.image_size = 32
    # SimCLR's CIFAR-10 settings (no blur at 32 px), with milder colour: the digits are grey.
    config.data.crop_area = (0.2, 1.0)
    config.data.color_strength = 0.5
    config.data.blur = False
    config.data.worker_count = 0
    config.data.prefetch = 2
    config.data.max_skipped_in_a_row = 1000

    config.objective = ml_collections.ConfigDict()
    config.objective.temperature = 0.2

    config.optim = config_lib.optim_group(
        lr=2e-3, warmup_steps=20, min_lr_ratio=0.0, weight_decay=1e-4
    )
    config.train = config_lib.train_group(
        global_batch_size=128, steps=300, log_every=25, checkpoint_every=100, eval_every=300
    )

    config.evals = probe_evals.digits_group()

    config.mesh = config_lib.mesh_group()
    return config


def tiny(config: ml_collections.ConfigDict) -> None:
    """Seconds, for tests: 16 px images, a two-stage ResNet of width 8, 5 steps."""
    config.model.image = ml_collections.ConfigDict(dict(stage_sizes=(1, 1), width=8))
    config.model.projection_hidden = 16
    config.model.projection_dim = 8
    config.data.image_size = 16
    config.data.prefetch = 0
    config.train.global_batch_size = 16
    config.train.steps = 5
    config.train.log_every = 1
    config.train.checkpoint_every = 2
    config.train.eval_every = 5
    config.evals.batch_size = 16
    config.evals.max_train_examples = 100
    config.evals.max_test_examples = 48
    config.evals.shots = (1, 2)
    config.evals.trials = 2


def resnet50_imagenet(config: ml_collections.ConfigDict) -> None:
    """SimCLR's ImageNet recipe (see the module docstring)."""
    batch, epoch_steps = 4096, 1_281_167 // 4096
    config.model.preset = "resnet50"
    config.model.dtype = "bfloat16"
    config.model.projection_hidden = 2048
    config.model.projection_dim = 128
    config.data.source = "tfds"
    config.data.name = "imagenet2012"
    config.data.data_dir = "/data/tfds"  # placeholder: where imagenet2012 is prepared
    config.data.train_split = "train"
    config.data.image_size = 224
    config.data.crop_area = (0.08, 1.0)
    config.data.color_strength = 1.0
    config.data.blur = True
    config.data.worker_count = 16
    config.objective.temperature = 0.1
    config.optim.name = "lars"
    config.optim.lr = 0.3 * batch / 256
    config.optim.weight_decay = 1e-6
    config.optim.warmup_steps = 10 * epoch_steps
    config.optim.clip_norm = 0.0
    config.train.global_batch_size = batch
    config.train.steps = 100 * epoch_steps
    config.train.log_every = 100
    config.train.checkpoint_every = 2000
    config.train.eval_every = 10 * epoch_steps
    config.evals.train_split = "train"
    config.evals.test_split = "validation"
    config.evals.batch_size = 1024
    config.evals.max_train_examples = 25_600
    config.evals.max_test_examples = 10_000


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """The preset named ``arg`` (``None``: ``"digits"``); see the module docstring.

    Raises:
      ValueError: an unknown preset; the message lists the choices.
    """
    preset = "digits" if arg is None or arg == "" else arg
    if preset not in PRESETS:
        raise ValueError(f"configs/simclr.py: unknown preset {preset!r}; choose from {PRESETS}")
    config = digits()
    if preset == "tiny":
        tiny(config)
    elif preset == "resnet50_imagenet":
        resnet50_imagenet(config)
    return config
