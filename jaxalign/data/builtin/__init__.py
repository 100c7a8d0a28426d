"""Built-in datasets: generated offline and deterministically, stored as TFDS array_record files.

``BUILTIN`` names the datasets; ``prepare(name, data_dir, **options)`` builds one (once) and
returns its ``tfds.core.DatasetBuilder``. Read it back without tensorflow::

    builder = prepare("shapes_captions", "/data")
    train = builder.as_data_source()["train"]  # or tfds.data_source(name, data_dir=...)
    train[0]  # {"image": uint8 [64, 64, 3], "caption": b"...", "label": int, ...}

- ``shapes_captions``: coloured shapes + captions; splits train / validation / test (test =
  held-out (colour, shape) pairs). See ``shapes_captions.py``.
- ``digits_domains``: scikit-learn digits (source), their MNIST-M-style photo blends (blend) and
  turned, noisy copies (rotated); splits ``{source,blend,rotated}_{train,validation,test}``. See
  ``digits_domains.py``.

For masked language modelling, ``caption_corpus`` gives the training captions and
``build_caption_tokenizer`` writes a Hugging Face tokenizer that covers the caption grammar.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import tensorflow_datasets as tfds

from jaxalign.data.builtin import digits_domains, shapes_captions
from jaxalign.data.builtin.digits_domains import DigitsDomains
from jaxalign.data.builtin.shapes_captions import ShapesCaptions
from jaxalign.errors import MissingDataError

BUILTIN: dict[str, type[tfds.core.GeneratorBasedBuilder]] = {
    "shapes_captions": ShapesCaptions,
    "digits_domains": DigitsDomains,
}

# Tokenizer special tokens, in id order ([PAD] = 0); the grammar's words follow, sorted.
SPECIAL_TOKENS: tuple[str, ...] = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "<|endoftext|>")
TOKENIZER_DIRNAME = "shapes_captions_tokenizer"
TOKENIZER_STAMP = "jaxalign-definition.sha256"  # beside the tokenizer's files

__all__ = [
    "BUILTIN",
    "SPECIAL_TOKENS",
    "DigitsDomains",
    "ShapesCaptions",
    "build_caption_tokenizer",
    "caption_corpus",
    "digits_domains",
    "load_caption_tokenizer",
    "prepare",
    "shapes_captions",
]


def prepare(name: str, data_dir: str | os.PathLike, **config: Any) -> tfds.core.DatasetBuilder:
    """Builds dataset ``name`` under ``data_dir`` unless already built; returns its builder.

    ``config`` are the dataset's options (``shapes_captions``: image_size, num_train,
    num_validation, num_test, seed; ``digits_domains``: image_size, seed); non-default options
    build a separate config directory. Needs no network: nothing is downloaded.

    Raises:
      ValueError: ``name`` is not in ``BUILTIN`` (the message lists the choices), or an option
        is unknown or invalid.
    """
    if name not in BUILTIN:
        raise ValueError(f"unknown built-in dataset {name!r}; choices: {sorted(BUILTIN)}")
    cls = BUILTIN[name]
    with _quiet_tfds():  # a first build warns that its folder has no dataset_info.json yet
        builder = cls(
            data_dir=os.fspath(data_dir),
            config=cls.make_config(**config),
            file_format="array_record",
        )
        if builder.is_prepared():
            return builder
        where = builder.data_dir
    print(f"jaxalign: generating the built-in dataset {name} in {where}", file=sys.stderr)
    started = time.perf_counter()
    # tfds would print that it is "downloading" and has "downloaded" the data, with a progress
    # bar per split: it generates it here, in a few seconds.
    with _quiet_tfds(), contextlib.redirect_stdout(io.StringIO()):
        builder.download_and_prepare(
            download_config=tfds.download.DownloadConfig(try_download_gcs=False)
        )
    print(f"jaxalign: generated {name} in {time.perf_counter() - started:.1f} s", file=sys.stderr)
    return builder


@contextlib.contextmanager
def _quiet_tfds() -> Iterator[None]:
    """tfds's progress bars off and its absl warnings hidden while the block runs."""
    from absl import logging as absl_logging

    verbosity = absl_logging.get_verbosity()
    absl_logging.set_verbosity(absl_logging.ERROR)
    tfds.display_progress_bar(False)
    try:
        yield
    finally:
        tfds.display_progress_bar(True)
        absl_logging.set_verbosity(verbosity)


def caption_corpus(data_dir: str | os.PathLike, **config: Any) -> list[str]:
    """The ``shapes_captions`` training captions, in record order (builds the dataset if needed).

    ``config``: ``shapes_captions`` options, as for ``prepare``. Returns ``num_train`` strings.
    """
    builder = prepare("shapes_captions", data_dir, **config)
    source = builder.as_data_source(split="train", decoders={"image": tfds.decode.SkipDecoding()})
    return [_as_str(source[i]["caption"]) for i in range(len(source))]


def _as_str(value: bytes | str) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def build_caption_tokenizer(data_dir: str | os.PathLike) -> Path:
    """Writes a word-level Hugging Face tokenizer for the caption grammar; returns its directory.

    The vocabulary is ``SPECIAL_TOKENS`` ([PAD] = 0, [UNK], [CLS], [SEP], [MASK], <|endoftext|>)
    followed by ``shapes_captions.VOCABULARY`` (every word the grammar can produce, sorted), so
    every caption encodes without [UNK]. Text is lower-cased and split on whitespace and
    punctuation; single sequences become ``[CLS] ... [SEP]``. The directory
    (``data_dir / "shapes_captions_tokenizer"``) loads offline with
    ``transformers.AutoTokenizer.from_pretrained(path, local_files_only=True)``. Written again
    only when its definition changed: a hash of the definition (``TOKENIZER_STAMP``) is kept
    beside it, so a run that finds it current does not import transformers (about 4 s where
    torch is installed, which transformers imports).
    """
    from tokenizers import Tokenizer, normalizers, pre_tokenizers, processors
    from tokenizers.models import WordLevel

    vocab = {token: i for i, token in enumerate((*SPECIAL_TOKENS, *shapes_captions.VOCABULARY))}
    tokenizer = Tokenizer(WordLevel(vocab=vocab, unk_token="[UNK]"))
    tokenizer.normalizer = normalizers.Lowercase()
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])],
    )
    special = {
        "pad_token": "[PAD]", "unk_token": "[UNK]", "cls_token": "[CLS]", "sep_token": "[SEP]",
        "mask_token": "[MASK]", "eos_token": "<|endoftext|>",
    }  # fmt: skip
    definition = json.dumps([tokenizer.to_str(), special, 64], sort_keys=True)
    stamp = hashlib.sha256(definition.encode()).hexdigest()
    path = Path(data_dir) / TOKENIZER_DIRNAME
    written = [path / TOKENIZER_STAMP, path / "tokenizer.json", path / "tokenizer_config.json"]
    if all(p.is_file() for p in written) and written[0].read_text() == stamp:
        return path
    from transformers import PreTrainedTokenizerFast

    fast = PreTrainedTokenizerFast(tokenizer_object=tokenizer, model_max_length=64, **special)
    path.mkdir(parents=True, exist_ok=True)
    fast.save_pretrained(os.fspath(path))
    partial = path / f"{TOKENIZER_STAMP}.{os.getpid()}"
    partial.write_text(stamp)
    partial.replace(path / TOKENIZER_STAMP)  # last, and whole: the files above are complete
    return path


def load_caption_tokenizer(data_dir: str | os.PathLike) -> Any:
    """The tokenizer ``build_caption_tokenizer`` wrote under ``data_dir``, as a
    ``tokenizers.Tokenizer`` (pad id 0, ``[PAD]``): the backend tokenizer that
    ``transformers.AutoTokenizer`` loads from the same directory, read without importing
    transformers, which takes about 4 s of every trainer process where torch is installed (it
    imports torch).

    Raises:
      MissingDataError: no ``tokenizer.json`` in ``data_dir / TOKENIZER_DIRNAME``.
    """
    from tokenizers import Tokenizer

    path = Path(data_dir) / TOKENIZER_DIRNAME / "tokenizer.json"
    if not path.is_file():
        raise MissingDataError(
            f"no built-in caption tokenizer at {path}; build_caption_tokenizer writes it"
        )
    return Tokenizer.from_file(os.fspath(path))
