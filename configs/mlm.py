"""Masked language modelling: ``get_config(preset)`` for the trainer (``task="mlm"``,
``jaxalign.tasks.mlm``).

Presets (``--config=configs/mlm.py:<preset>``; no preset = ``captions``):

- ``captions``: a small bidirectional Transformer on the captions of ``shapes_captions``'
  train split with the built-in caption tokenizer, evaluated on its validation captions
  (masked-token accuracy, perplexity, and the most-frequent-token baseline), on CPU::

    jaxalign train --config=configs/mlm.py:captions --workdir=runs/mlm_captions

- ``bert_base_text``: a BERT-base-sized tower (12 x 768, post-norm as BERT) on local text
  files (``data.train_split`` and ``evals.split`` are globs) with a local Hugging Face
  tokenizer directory (``data.tokenizer``), for a GPU; both are placeholders to override. Its
  tower is bert-base's, so ``--config.model.init_from_bert=/path/to/bert-base-uncased``
  continues BERT's pretraining on your text.
- ``tiny``: a few steps of a very small tower, for tests.

Keys (every preset has all of them; ``jaxalign.tasks.mlm.MLMConfig`` and the groups of
``jaxalign.schema`` give their types, ranges and rules). ``seed``, ``init_from``, ``optim``,
``train`` and ``mesh`` are as in ``configs/clip.py``; the task's own:

- ``model``: ``dtype``, ``remat``, ``init_from_bert`` (a local Hugging Face BERT directory,
  ``BertForMaskedLM`` or ``BertModel``: the run starts from its tower, and its masked-LM head
  where it has one; ``text`` must then match its architecture, ``data.tokenizer`` its
  vocabulary; ``""``: random initialisation), ``text`` (``TextTransformer`` fields:
  ``width``, ``depth``, ``mlp_dim``, ``num_heads``, ``causal`` (must be False), ``pre_norm``
  ...; the vocabulary comes from the tokenizer, the length from ``data.max_len``).
- ``data``: ``source`` (``builtin`` | ``text_files``), ``name`` and ``data_dir`` (the built-in
  dataset), ``train_split`` (a split, or a glob of text files: one example per non-empty line),
  ``text_key`` (``caption`` for the built-in data, ``text`` for files), ``tokenizer`` (a local
  Hugging Face tokenizer directory with a mask token; ``""``: the built-in caption tokenizer),
  ``max_len``, ``worker_count``, ``prefetch``, ``max_skipped_in_a_row``.
- ``objective``: ``mask_ratio`` (BERT's 0.15).
- ``evals``: ``split`` (as ``train_split``), ``batch_size``, ``max_examples`` (0: all).
"""

from __future__ import annotations

import ml_collections

from jaxalign import config as config_lib

PRESETS: tuple[str, ...] = ("captions", "bert_base_text", "tiny")


def captions() -> ml_collections.ConfigDict:
    """The CPU preset; every other preset starts from it."""
    config = ml_collections.ConfigDict()
    config.seed = 0
    config.task = "mlm"
    config.init_from = config_lib.init_from_off()
    config.model = ml_collections.ConfigDict(dict(dtype="float32", remat="none", init_from_bert=""))
    config.model.text = ml_collections.ConfigDict(
        dict(width=128, depth=2, mlp_dim=256, num_heads=4, causal=False)
    )
    config.data = ml_collections.ConfigDict(
        dict(
            source="builtin",
            name="shapes_captions",
            data_dir="~/.cache/jaxalign/datasets",
            train_split="train",
            text_key="caption",
            tokenizer="",
            max_len=16,
            worker_count=0,
            prefetch=2,
            max_skipped_in_a_row=1000,
        )
    )
    config.objective = ml_collections.ConfigDict(dict(mask_ratio=0.15))
    config.optim = config_lib.optim_group(
        lr=1e-3, warmup_steps=20, min_lr_ratio=0.0, weight_decay=0.01, b2=0.98
    )
    config.train = config_lib.train_group(
        global_batch_size=128, steps=300, log_every=25, checkpoint_every=100, eval_every=300
    )
    config.evals = ml_collections.ConfigDict(
        dict(split="validation", batch_size=256, max_examples=0)
    )
    config.mesh = config_lib.mesh_group()
    return config


def tiny(config: ml_collections.ConfigDict) -> None:
    """Seconds, for tests."""
    config.model.text = ml_collections.ConfigDict(
        dict(width=32, depth=1, mlp_dim=64, num_heads=2, causal=False)
    )
    config.data.prefetch = 0
    config.train.update(
        global_batch_size=16, steps=5, log_every=1, checkpoint_every=2, eval_every=5
    )
    config.evals.update(batch_size=16, max_examples=64)


def bert_base_text(config: ml_collections.ConfigDict) -> None:
    """BERT-base on local text (see the module docstring)."""
    config.model.dtype = "bfloat16"
    config.model.text = ml_collections.ConfigDict(
        dict(width=768, depth=12, mlp_dim=3072, num_heads=12, causal=False, pre_norm=False)
    )
    config.model.text.update(type_vocab_size=2, act="gelu", ln_eps=1e-12)  # as bert-base
    config.data.update(source="text_files", train_split="/data/text/train/*.txt")
    config.data.update(text_key="text", tokenizer="/data/tokenizers/bert-base-uncased")
    config.data.update(max_len=128, worker_count=8)
    config.optim.update(lr=1e-4, warmup_steps=10_000, weight_decay=0.01, b2=0.999)
    config.train.update(global_batch_size=256, steps=1_000_000, log_every=100)
    config.train.update(checkpoint_every=5000, eval_every=20_000)
    config.evals.update(split="/data/text/validation/*.txt", batch_size=256, max_examples=10_000)


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """The preset named ``arg`` (``None``: ``"captions"``); see the module docstring.

    Raises:
      ValueError: an unknown preset; the message lists the choices.
    """
    preset = "captions" if arg is None or arg == "" else arg
    if preset not in PRESETS:
        raise ValueError(f"configs/mlm.py: unknown preset {preset!r}; choose from {PRESETS}")
    config = captions()
    if preset == "tiny":
        tiny(config)
    elif preset == "bert_base_text":
        bert_base_text(config)
    return config
