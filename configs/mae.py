"""Masked autoencoder pretraining: ``get_config(preset)`` for the trainer (``task="mae"``,
``jaxalign.tasks.mae``).

Presets (``--config=configs/mae.py:<preset>``; no preset = ``digits``):

- ``digits``: a small ViT (4 px patches, mean pooling, sin-cos positions) pretrained on the
  images of ``digits_domains``' ``source_train`` (labels unread) with 75% of the patches
  hidden, probed on its frozen pooled features like ``configs/simclr.py:digits``, with a
  picture (inputs, masked inputs, reconstructions) in ``images/`` at every eval, on CPU::

    jaxalign train --config=configs/mae.py:digits --workdir=runs/mae_digits

- ``vit_b16_imagenet``: the paper's ViT-B/16 recipe (He et al., 2022: mask ratio 0.75,
  normalised-pixel targets, an 8-block 512-wide decoder, AdamW at 1.5e-4 x batch / 256, betas
  0.9 / 0.95, weight decay 0.05, batch 4096, 40 warmup epochs of 800) on a TFDS
  ``imagenet2012``, bfloat16, for TPU pods and GPU clusters.
- ``tiny``: a few steps on 16 px images, for tests.

Keys (every preset has all of them; ``jaxalign.tasks.mae.MAEConfig`` and the groups of
``jaxalign.schema`` give their types, ranges and rules). ``seed``, ``init_from``, ``optim``,
``train`` and ``mesh`` are as in ``configs/clip.py``; the task's own:

- ``model``: ``preset`` (a ViT preset of ``jaxalign.models.PRESETS``: the encoder), ``dtype``,
  ``remat``, ``image`` (ViT fields overriding the preset's: ``patch_size``, ``pool``,
  ``posemb`` ...), ``decoder_width``, ``decoder_depth``, ``decoder_heads``, ``decoder_mlp_dim``.
- ``data``: as in ``configs/autoencoder.py``.
- ``objective``: ``mask_ratio`` (of each image's patches hidden), ``norm_pix_loss`` (targets
  normalised per patch).
- ``evals``: as in ``configs/autoencoder.py``.
"""

from __future__ import annotations

import ml_collections

from jaxalign import config as config_lib
from jaxalign.tasks import probe_evals, reconstruction

PRESETS: tuple[str, ...] = ("digits", "vit_b16_imagenet", "tiny")


def digits() -> ml_collections.ConfigDict:
    """The CPU preset; every other preset starts from it."""
    config = ml_collections.ConfigDict()
    config.seed = 0
    config.task = "mae"
    config.init_from = config_lib.init_from_off()
    config.model = ml_collections.ConfigDict()
    config.model.preset = "tiny"
    config.model.dtype = "float32"
    config.model.remat = "none"
    config.model.image = ml_collections.ConfigDict(
        dict(patch_size=4, width=128, depth=4, mlp_dim=256, pool="mean", posemb="sincos2d")
    )
    config.model.decoder_width = 64
    config.model.decoder_depth = 2
    config.model.decoder_heads = 4
    config.model.decoder_mlp_dim = 128
    config.data = reconstruction.digits_data_group()
    config.objective = ml_collections.ConfigDict(dict(mask_ratio=0.75, norm_pix_loss=True))
    config.optim = config_lib.optim_group(
        lr=1e-3, warmup_steps=20, min_lr_ratio=0.0, weight_decay=0.05, b2=0.95
    )
    config.train = config_lib.train_group(
        global_batch_size=128, steps=300, log_every=25, checkpoint_every=100, eval_every=300
    )
    config.evals = probe_evals.digits_group(grid_examples=10, grid_scale=3)
    config.mesh = config_lib.mesh_group()
    return config


def tiny(config: ml_collections.ConfigDict) -> None:
    """Seconds, for tests: 16 px images, 16 patches of which 4 are visible."""
    config.model.image = ml_collections.ConfigDict(
        dict(
            patch_size=4, width=32, depth=1, mlp_dim=64, num_heads=2, pool="mean", posemb="sincos2d"
        )
    )
    config.model.update(decoder_width=16, decoder_depth=1, decoder_heads=2, decoder_mlp_dim=32)
    config.data.image_size = 16
    config.data.prefetch = 0
    config.train.update(
        global_batch_size=16, steps=5, log_every=1, checkpoint_every=2, eval_every=5
    )
    config.evals.update(
        batch_size=16, max_train_examples=100, max_test_examples=48, shots=(1, 2), trials=2
    )
    config.evals.grid_examples = 4


def vit_b16_imagenet(config: ml_collections.ConfigDict) -> None:
    """The paper's ViT-B/16 recipe (see the module docstring)."""
    batch, epoch_steps = 4096, 1_281_167 // 4096
    config.model.preset = "ViT-B/16"
    config.model.dtype = "bfloat16"
    config.model.image = ml_collections.ConfigDict(dict(pool="mean", posemb="sincos2d"))
    config.model.update(decoder_width=512, decoder_depth=8, decoder_heads=16, decoder_mlp_dim=2048)
    config.data.update(source="tfds", name="imagenet2012", data_dir="/data/tfds")
    config.data.update(train_split="train", image_size=224, crop_area=(0.2, 1.0), flip=True)
    config.data.worker_count = 16
    config.optim.update(lr=1.5e-4 * batch / 256, b2=0.95, weight_decay=0.05, clip_norm=0.0)
    config.optim.warmup_steps = 40 * epoch_steps
    config.train.update(global_batch_size=batch, steps=800 * epoch_steps, log_every=100)
    config.train.update(checkpoint_every=2000, eval_every=50 * epoch_steps)
    config.evals.update(train_split="train", test_split="validation", batch_size=1024)
    config.evals.update(max_train_examples=25_600, max_test_examples=10_000, grid_scale=1)


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """The preset named ``arg`` (``None``: ``"digits"``); see the module docstring.

    Raises:
      ValueError: an unknown preset; the message lists the choices.
    """
    preset = "digits" if arg is None or arg == "" else arg
    if preset not in PRESETS:
        raise ValueError(f"configs/mae.py: unknown preset {preset!r}; choose from {PRESETS}")
    config = digits()
    if preset == "tiny":
        tiny(config)
    elif preset == "vit_b16_imagenet":
        vit_b16_imagenet(config)
    return config
