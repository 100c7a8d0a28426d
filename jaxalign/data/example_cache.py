"""Transformed examples kept in memory by source index, for transforms that do not depend on
the example's key (no random augmentation: evaluation transforms, the adaptation task's).

A small dataset read for many epochs (the digits domains: 1,252 training images, read 25 times
in a 500-step run) otherwise decodes, resizes and normalises every image again each epoch, on
the same cores as the step; with the cache each record is read and transformed once per
process, and later epochs (and later evals of the same split) take the stored arrays. The
batches are bit-identical with and without it (``tests/data/test_example_cache.py``).

``make_pipeline(..., cache=ExampleCache(max_bytes))`` uses one. A cache belongs to one source
and one transform (it refuses another); it stores examples until ``max_bytes`` of arrays, then
serves what it holds and transforms the rest each time. Stored arrays are read-only (batching
copies them). A record skipped as bad (``Skip``) is stored too, so it stays skipped in every
later epoch, even if its read failed for a passing reason. Worker processes (``worker_count >
0``) each fill a copy of their own (pickling a cache drops its contents): up to ``max_bytes``
per worker, and the main process's copy stays empty.
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Callable, Hashable
from typing import Any

import numpy as np

from jaxalign.data.transforms import Skip

MIB = 2**20


def uses_key(transform: Any) -> bool:
    """Whether ``transform``'s output depends on the ``ExampleKey`` (random augmentation):
    its ``uses_key`` attribute, True when it has none."""
    return bool(getattr(transform, "uses_key", True))


class ExampleCache:
    """``index -> example (or Skip)`` for one source and one key-independent transform, up to
    ``max_bytes`` of arrays. Safe to share between the read threads of one process."""

    def __init__(self, max_bytes: int):
        if max_bytes < 1:
            raise ValueError(f"ExampleCache: max_bytes={max_bytes} must be >= 1")
        self.max_bytes = int(max_bytes)
        self.nbytes = 0
        self.full = False  # an example did not fit: from then on some are transformed each time
        self._examples: dict[int, Any] = {}
        self._owner: Hashable | None = None
        self._lock = threading.Lock()

    def serving(self, read: Callable[[Any], Any], *, source: Any, transform: Any) -> CachedRead:
        """``read`` (``(epoch, index) -> example``: the pipeline's read + transform of
        ``source`` by ``transform``) answered from this cache where it can be.

        Raises:
          ValueError: ``transform`` may depend on the example's key (``uses_key``), or this
            cache already serves another source (told apart by ``repr`` and length: give a
            source a ``repr`` that names its data) or another transform.
        """
        if uses_key(transform):
            raise ValueError(
                f"ExampleCache: needs a transform whose output does not depend on the example's "
                f"key (uses_key False); {transform!r} may (random augmentation)"
            )
        self.bind((repr(source), len(source), transform))
        return CachedRead(read, self)

    def bind(self, owner: Hashable) -> None:
        """Ties the cache to ``owner`` (what identifies the source and the transform); raises
        ValueError if it already serves another."""
        with self._lock:
            if self._owner is None:
                self._owner = owner
            elif self._owner != owner:
                raise ValueError(
                    f"ExampleCache: this cache holds examples of {self._owner!r}; "
                    f"got {owner!r} (use one cache per source and transform)"
                )

    def get(self, index: int) -> Any | None:
        """The stored example of source ``index``, or None."""
        return self._examples.get(index)

    def put(self, index: int, example: Any) -> None:
        """Stores ``example`` (a dict of arrays, or a ``Skip``) if it fits, arrays read-only."""
        if isinstance(example, Skip):
            size = 0
        else:
            example = {k: np.asarray(v) for k, v in example.items()}
            for array in example.values():
                array.setflags(write=False)
            size = sum(array.nbytes for array in example.values())
        with self._lock:
            if index in self._examples:
                return
            if self.nbytes + size > self.max_bytes:
                self.full = True
                return
            self._examples[index] = example
            self.nbytes += size

    def __len__(self) -> int:
        return len(self._examples)

    def __repr__(self) -> str:
        return (
            f"ExampleCache({len(self)} examples, {self.nbytes / MIB:.1f} of "
            f"{self.max_bytes / MIB:.1f} MiB{', full' if self.full else ''})"
        )

    def __getstate__(self) -> dict[str, Any]:
        return {"max_bytes": self.max_bytes, "owner": self._owner}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["max_bytes"])
        self._owner = state["owner"]


@dataclasses.dataclass(frozen=True)
class CachedRead:
    """``(epoch, index) -> example``: ``cache``'s example of ``index``, else ``read``'s
    (then stored). The epoch is ignored by a key-independent transform."""

    read: Callable[[Any], Any]
    cache: ExampleCache

    def __call__(self, epoch_and_index: tuple[int, int]) -> Any:
        index = epoch_and_index[1]
        out = self.cache.get(index)
        if out is None:
            out = self.read(epoch_and_index)
            self.cache.put(index, out)
        return out
