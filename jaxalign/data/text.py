"""Text for masked language modelling: local text files as a random-access source (one record
per non-empty line), and the transform from a record to token ids."""

from __future__ import annotations

import dataclasses
import glob
import os
from collections.abc import Mapping
from typing import Any

from jaxalign.data.tokenizer import TextTokenizer
from jaxalign.data.transforms import BadExample, ExampleKey, Skip, get_caption
from jaxalign.errors import DataError, MissingDataError


class TextLinesSource:
    """The non-empty lines (stripped) of the files ``pattern`` matches (a glob, ``~``
    expanded; files in sorted order, UTF-8) as records ``{"text": line}``; held in memory.

    Raises:
      MissingDataError: no file matches. DataError: a file that is not UTF-8 (naming it and
      the byte offset), or no non-empty line in all of them.
    """

    def __init__(self, pattern: str):
        self.pattern = pattern
        paths = sorted(glob.glob(os.path.expanduser(pattern)))
        if not paths:
            raise MissingDataError(f"no text file matches {pattern!r}")
        self.lines: list[str] = []
        for path in paths:
            try:
                with open(path, encoding="utf-8") as f:
                    self.lines.extend(line.strip() for line in f if line.strip())
            except UnicodeDecodeError as error:
                raise DataError(f"{path}: not UTF-8 text (byte {error.start})") from None
        if not self.lines:
            raise DataError(f"{pattern!r}: {len(paths)} file(s), no non-empty line")

    def __len__(self) -> int:
        return len(self.lines)

    def __getitem__(self, index: int) -> dict[str, str]:
        return {"text": self.lines[index]}

    def __repr__(self) -> str:
        return f"TextLinesSource({self.pattern!r}, {len(self.lines)} lines)"


@dataclasses.dataclass(frozen=True)
class TextTransform:
    """``record -> {"ids": [L] int32, "mask": [L] int32}``: the record's ``text_key`` (one
    drawn at random from a list of captions) tokenised to ``L = tokenizer.max_length``; a
    missing or empty text gives ``Skip``."""

    tokenizer: TextTokenizer
    text_key: str = "text"

    def __call__(self, record: Mapping[str, Any], key: ExampleKey) -> dict[str, Any] | Skip:
        try:
            text = get_caption(record, self.text_key, key.rng())
        except BadExample as bad:
            return Skip(bad.reason)
        ids, mask = self.tokenizer(text)
        return {"ids": ids, "mask": mask}
