"""Image classification: ``get_config(preset)`` for the trainer (``task="classify"``).

Presets (``--config=configs/classify.py:<preset>``; no preset = ``digits``):

- ``digits``: the demo's small CNN tower (``model.preset="tiny-cnn"``) trained from scratch on
  ``digits_domains``' source domain (scikit-learn digits, 32x32), evaluated on its source
  validation and test splits and, as the domain-shift baseline, on the blended target test
  split::

    jaxalign train --config=configs/classify.py:digits --workdir=runs/digits

- ``shapes_scratch``, ``shapes_finetune``, ``shapes_probe``: the (colour, shape) label of
  ``shapes_captions`` learnt from 10 labelled images per class of its train split (24 classes
  occur there; 240 images, drawn by ``seed``), scored at the last step (no selection among
  checkpoints) on the two halves of its validation split, which no training run reads:
  ``validation[:256]`` (dev: where the learning rates below were chosen) and
  ``validation[256:]`` (test: read by no choice). ``shapes_scratch`` trains the tower from
  scratch; ``shapes_finetune`` starts the tower from the CLIP demo run in ``runs/demo``
  (``init_from``) and fine-tunes all of it, the tower at a tenth of the head's rate (fixed
  beforehand); ``shapes_probe`` freezes that tower and trains the head alone (a linear probe).
  Train the CLIP demo first (the README's first command), then::

    jaxalign train --config=configs/classify.py:shapes_finetune --workdir=runs/finetune

  Each preset's ``optim.lr`` is the one ``benchmarks/transfer_shapes.py`` selected on dev (mean
  of seeds 0, 1, 2); the figures, with their spread, are in docs/results/transfer_shapes.md.

- ``tiny``: a few steps on small images, for tests.

Keys (every preset has all of them; ``jaxalign.tasks.classify.ClassifyConfig`` and the groups of
``jaxalign.schema`` give their types, ranges and rules). ``seed``, ``init_from``, ``optim``,
``train`` and ``mesh`` are as in ``configs/clip.py``; the task's own:

- ``model``: ``preset`` (a ``jaxalign.models.PRESETS`` name: its image tower), ``dtype``,
  ``remat``, ``image`` (tower fields overriding the preset's), ``backbone_lr_mult`` (the tower's
  learning rate over the head's; 0 freezes it: a linear probe).
- ``data``: ``source`` (``builtin`` | ``tfds``), ``name``, ``data_dir``, ``train_split``,
  ``label_key`` (the ``ClassLabel`` feature to predict), ``examples_per_class`` (0: the whole
  split), ``image_size``, ``augment`` (random 80-100% crops and flips), ``worker_count``,
  ``prefetch``, ``max_skipped_in_a_row`` (as in ``configs/clip.py``).
- ``objective``: ``label_smoothing``.
- ``evals``: ``splits`` (each reported as ``eval/<split>/top1`` and ``/top5``), ``batch_size``,
  ``max_examples`` (per split; 0: all), ``knn_k`` (0: off; else also the weighted k-NN accuracy
  of the tower's features, the training examples as the memory bank).
"""

from __future__ import annotations

import ml_collections

from jaxalign import config as config_lib

PRESETS: tuple[str, ...] = (
    "digits",
    "shapes_scratch",
    "shapes_finetune",
    "shapes_probe",
    "tiny",
)


def base() -> ml_collections.ConfigDict:
    """``digits``: every key, with the digits preset's values."""
    config = ml_collections.ConfigDict()
    config.seed = 0
    config.task = "classify"
    config.init_from = config_lib.init_from_off()

    config.model = ml_collections.ConfigDict()
    config.model.preset = "tiny-cnn"
    config.model.dtype = "float32"
    config.model.remat = "none"
    config.model.image = ml_collections.ConfigDict()
    config.model.backbone_lr_mult = 1.0

    config.data = ml_collections.ConfigDict()
    config.data.source = "builtin"
    config.data.name = "digits_domains"
    config.data.data_dir = "~/.cache/jaxalign/datasets"
    config.data.train_split = "source_train"
    config.data.label_key = "label"
    config.data.examples_per_class = 0
    config.data.image_size = 32
    config.data.augment = False
    config.data.worker_count = 0
    config.data.prefetch = 2
    config.data.max_skipped_in_a_row = 1000

    config.objective = ml_collections.ConfigDict()
    config.objective.label_smoothing = 0.0

    config.optim = ml_collections.ConfigDict()
    config.optim.name = "adamw"
    config.optim.lr = 1e-3
    config.optim.warmup_steps = 20
    config.optim.min_lr_ratio = 0.0
    config.optim.weight_decay = 0.05
    config.optim.b1 = 0.9
    config.optim.b2 = 0.999
    config.optim.eps = 1e-8
    config.optim.clip_norm = 1.0
    config.optim.micro_batches = 1
    config.optim.max_nonfinite_in_a_row = 10
    config.optim.ema_decay = 0.0

    config.train = ml_collections.ConfigDict()
    config.train.global_batch_size = 64
    config.train.steps = 400
    config.train.log_every = 50
    config.train.checkpoint_every = 200
    config.train.keep_checkpoints = 2
    config.train.eval_every = 200
    config.train.max_failed_saves = 3
    config.train.timing_in_metrics = True

    config.evals = ml_collections.ConfigDict()
    config.evals.splits = ("source_validation", "source_test", "blend_test")
    config.evals.batch_size = 128
    config.evals.max_examples = 0
    config.evals.knn_k = 0

    config.mesh = ml_collections.ConfigDict()
    config.mesh.data = -1
    config.mesh.fsdp = 1
    config.mesh.tensor = 1
    return config


def shapes(config: ml_collections.ConfigDict) -> None:
    """10 labelled images per (colour, shape) class of shapes_captions, trained from scratch
    with the CLIP demo's tower at the demo's image size."""
    config.data.name = "shapes_captions"
    config.data.train_split = "train"
    config.data.examples_per_class = 10
    config.data.image_size = 64
    config.data.augment = True
    config.train.steps = 300
    config.train.eval_every = 300
    config.train.checkpoint_every = 300
    config.optim.lr = 1e-2  # chosen on dev (docs/results/transfer_shapes.md)
    config.evals.splits = ("validation[:256]", "validation[256:]")  # dev, test
    config.evals.knn_k = 10


def transfer(config: ml_collections.ConfigDict, backbone_lr_mult: float) -> None:
    """Start the tower from the CLIP demo run in ``runs/demo``."""
    config.init_from.workdir = "runs/demo"
    config.init_from.params = ("image_tower->backbone",)
    config.model.backbone_lr_mult = backbone_lr_mult


def tiny(config: ml_collections.ConfigDict) -> None:
    """A few steps of a very small tower: seconds, for tests."""
    config.model.image = ml_collections.ConfigDict(dict(channels=(8, 16), features=32))
    config.data.image_size = 16
    config.data.prefetch = 0
    config.train.global_batch_size = 16
    config.train.steps = 6
    config.train.log_every = 1
    config.train.checkpoint_every = 3
    config.train.eval_every = 6
    config.evals.splits = ("source_validation",)
    config.evals.batch_size = 32
    config.evals.max_examples = 64


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """The preset named ``arg`` (``None``: ``"digits"``); see the module docstring.

    Raises:
      ValueError: an unknown preset; the message lists the choices.
    """
    preset = "digits" if arg is None or arg == "" else arg
    if preset not in PRESETS:
        raise ValueError(f"configs/classify.py: unknown preset {preset!r}; choose from {PRESETS}")
    config = base()
    if preset.startswith("shapes_"):
        shapes(config)
    if preset == "shapes_finetune":
        transfer(config, backbone_lr_mult=0.1)
        config.optim.lr = 3e-2  # chosen on dev; the tower trains at 3e-3
    elif preset == "shapes_probe":
        transfer(config, backbone_lr_mult=0.0)
        config.optim.lr = 3e-1  # chosen on dev
    elif preset == "tiny":
        tiny(config)
    return config
