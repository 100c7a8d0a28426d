"""Tokenisation for the pipeline: any Hugging Face tokenizer to fixed-length int32 ids and a
padding mask (``[length]`` per example, ``[n, length]`` per batch)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np


class TextTokenizer:
    """A Hugging Face tokenizer to fixed-length ids: ``str -> ([length] int32, [length] int32)``.

    Accepts a ``tokenizers.Tokenizer`` or a ``transformers.PreTrainedTokenizerFast`` (its backend
    tokenizer is used, so special tokens come from its post-processor). Works on a private copy
    with truncation to ``max_length`` (keeping the special tokens, e.g. CLIP's end token) and
    padding to exactly ``max_length``. ``mask`` is 1 on real tokens, 0 on padding. The pad id is
    ``pad_id``, else the tokenizer's pad token id, else 0. Picklable (for worker processes).
    """

    def __init__(self, tokenizer: Any, max_length: int, *, pad_id: int | None = None):
        import tokenizers  # local: keeps `import jaxalign.data` light for image-only use

        if max_length < 1:
            raise ValueError(f"max_length must be >= 1, got {max_length}")
        backend = getattr(tokenizer, "backend_tokenizer", tokenizer)
        if not isinstance(backend, tokenizers.Tokenizer):
            raise TypeError(
                "tokenizer must be a tokenizers.Tokenizer or a transformers "
                f"PreTrainedTokenizerFast, got {type(tokenizer).__name__}"
            )
        if pad_id is None:
            pad_id = getattr(tokenizer, "pad_token_id", None)
        if pad_id is None and backend.padding is not None:
            pad_id = backend.padding.get("pad_id")
        self.pad_id = int(pad_id or 0)
        self.max_length = int(max_length)
        pad_token = getattr(tokenizer, "pad_token", None) or backend.id_to_token(self.pad_id)
        self._tokenizer = tokenizers.Tokenizer.from_str(backend.to_str())
        self._tokenizer.enable_truncation(max_length=self.max_length)
        self._tokenizer.enable_padding(
            length=self.max_length, pad_id=self.pad_id, pad_token=pad_token or "[PAD]"
        )

    def __call__(self, text: str) -> tuple[np.ndarray, np.ndarray]:
        """``str`` -> ``(ids [length] int32, mask [length] int32)``."""
        encoding = self._tokenizer.encode(text)
        return (
            np.asarray(encoding.ids, dtype=np.int32),
            np.asarray(encoding.attention_mask, dtype=np.int32),
        )

    def encode_batch(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """``n`` strings -> ``(ids [n, length] int32, mask [n, length] int32)``."""
        encodings = self._tokenizer.encode_batch(list(texts))
        ids = np.asarray([e.ids for e in encodings], dtype=np.int32).reshape(-1, self.max_length)
        mask = np.asarray([e.attention_mask for e in encodings], dtype=np.int32)
        return ids, mask.reshape(-1, self.max_length)
