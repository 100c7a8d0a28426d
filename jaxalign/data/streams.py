"""Several named streams drawn together, one batch from each per step: :func:`zip_streams`.

A task may train on several streams at once, e.g. a labelled ``"source"`` domain and an
unlabelled ``"target"`` domain (DANN, MMD). Each step's batch is the nested dict of this process's
batches, names in the given order (``b`` may differ per stream)::

    {"source": {"image": [b, S, S, 3], "label": [b]}, "target": {"image": [b, S, S, 3]}}

Each stream is a :class:`~jaxalign.data.pipeline.Pipeline`, or any iterable whose iterator has
``get_state()`` (plain JSON types) and ``set_state(state)``, and optionally ``close()`` and
``metrics()``. The zipped iterator's state is ``{name: that stream's state}``; restoring it on a
fresh iterator resumes every stream exactly where it was. Iteration ends when any stream ends
(train by step count over ``num_epochs=None`` streams).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from typing import Any


class ZippedStream:
    """Iterable of ``{name: batch}``; ``iter()`` gives a :class:`ZippedIterator`."""

    def __init__(self, streams: Mapping[str, Iterable[Any]]):
        if not streams:
            raise ValueError("zip_streams: no streams given (expected {name: pipeline, ...})")
        for name in streams:
            if not isinstance(name, str) or not name:
                raise ValueError(f"zip_streams: stream names must be non-empty str, got {name!r}")
        self.streams: dict[str, Iterable[Any]] = dict(streams)

    def __iter__(self) -> ZippedIterator:
        return ZippedIterator({name: iter(stream) for name, stream in self.streams.items()})

    def __repr__(self) -> str:
        return f"ZippedStream({list(self.streams)})"


class ZippedIterator(Iterator[dict[str, Any]]):
    """Yields ``{name: next(iterators[name])}``; checkpointable with ``get_state`` /
    ``set_state``. ``iterators`` maps each name to its stream's iterator."""

    def __init__(self, iterators: Mapping[str, Any]):
        for name, iterator in iterators.items():
            missing = [m for m in ("get_state", "set_state") if not hasattr(iterator, m)]
            if missing:
                raise TypeError(
                    f"zip_streams: the iterator of stream {name!r} ({iterator!r}) has no "
                    f"{' / '.join(missing)}; it cannot be resumed exactly"
                )
        self.iterators: dict[str, Any] = dict(iterators)

    def __next__(self) -> dict[str, Any]:
        return {name: next(iterator) for name, iterator in self.iterators.items()}

    def get_state(self) -> dict[str, Any]:
        """``{name: that stream's iterator state}``, plain JSON types."""
        return {name: iterator.get_state() for name, iterator in self.iterators.items()}

    def set_state(self, state: Mapping[str, Any]) -> None:
        """Restores every stream; a ValueError names the missing or unexpected stream names."""
        if not isinstance(state, Mapping):
            raise ValueError(f"zipped stream state must be a dict of streams, got {state!r:.80}")
        missing = [name for name in self.iterators if name not in state]
        unexpected = [name for name in state if name not in self.iterators]
        if missing or unexpected:
            raise ValueError(
                f"zipped stream state has streams {list(state)}, this stream has "
                f"{list(self.iterators)}: missing {missing}, unexpected {unexpected}"
            )
        for name, iterator in self.iterators.items():
            iterator.set_state(state[name])

    def metrics(self) -> dict[str, Any]:
        """Each stream's ``metrics()`` (where it has one), keys prefixed ``"<name>/"``:
        ``{"source/data/batches": ..., "source/data/skipped": ..., "target/...": ...}``."""
        out: dict[str, Any] = {}
        for name, iterator in self.iterators.items():
            if callable(getattr(iterator, "metrics", None)):
                out.update({f"{name}/{key}": value for key, value in iterator.metrics().items()})
        return out

    def close(self) -> None:
        """Closes every stream's iterator that has ``close()``; all are closed even when one
        raises (the first error is then re-raised)."""
        error: BaseException | None = None
        for iterator in self.iterators.values():
            if callable(getattr(iterator, "close", None)):
                try:
                    iterator.close()
                except Exception as e:  # close the others before reporting
                    error = error or e
        if error is not None:
            raise error

    def __repr__(self) -> str:
        return f"ZippedIterator({list(self.iterators)})"


def zip_streams(streams: Mapping[str, Iterable[Any]]) -> ZippedStream:
    """``{name: stream}`` -> a :class:`ZippedStream` yielding ``{name: batch}`` per step.

    Args:
      streams: named streams, each a ``Pipeline`` or an iterable whose iterator has
        ``get_state()`` / ``set_state(state)`` (and optionally ``close()``, ``metrics()``).

    Raises:
      ValueError: no streams, or a name that is not a non-empty str.
    """
    return ZippedStream(streams)
