"""Hugging Face tokenizers from a local directory (never the hub), with errors that name the
file at fault. ``jaxalign.interop.hf.load_tokenizer`` is this module's ``load_tokenizer``."""

from __future__ import annotations

import pathlib
from typing import TYPE_CHECKING

from jaxalign.errors import DataError, MissingDataError, read_json_object

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "vocab.txt",
    "vocab.json",
    "tokenizer.model",
    "spiece.model",
    "sentencepiece.bpe.model",
)
# The JSON files a tokenizer directory may hold (each must be a JSON object).
TOKENIZER_JSON = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                  "added_tokens.json", "vocab.json", "config.json")  # fmt: skip


def load_tokenizer(path: str | pathlib.Path) -> PreTrainedTokenizerBase:
    """A local Hugging Face tokenizer directory -> ``transformers`` tokenizer (never the hub).

    Raises:
      MissingDataError: no directory, or no tokenizer files in it.
      DataError: a tokenizer file transformers cannot load, named with the reason (a JSON file
        that is not a JSON object, a ``tokenizer.json`` the tokenizers library refuses), or
        the directory when no one file is to blame.
    """
    from transformers import AutoTokenizer

    path = pathlib.Path(path)
    if not path.is_dir():
        raise MissingDataError(f"tokenizer directory {path} does not exist")
    if not any((path / name).is_file() for name in TOKENIZER_FILES):
        raise MissingDataError(f"no tokenizer files in {path}; expected one of {TOKENIZER_FILES}")
    try:
        return AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    except ImportError:
        raise
    except Exception as error:  # transformers and tokenizers raise many types, even Exception
        raise tokenizer_error(path, error) from None


def tokenizer_error(path: pathlib.Path, error: Exception) -> DataError:
    """Why the tokenizer in ``path`` did not load, naming the file at fault where one is."""
    from tokenizers import Tokenizer

    for name in TOKENIZER_JSON:
        if (path / name).exists():
            try:
                read_json_object(path / name)
            except DataError as bad:  # names the file
                return bad
    if (path / "tokenizer.json").is_file():
        try:
            Tokenizer.from_file(str(path / "tokenizer.json"))
        except Exception as reason:  # the tokenizers library raises plain Exception
            return DataError(f"{path / 'tokenizer.json'}: not a tokenizers file ({reason})")
    reason = " ".join(str(error).split())
    return DataError(
        f"{path}: transformers cannot load this tokenizer ({type(error).__name__}: {reason})"
    )
