"""The grain input pipeline: global shuffle, per-process shard, transform, skip, batch, resume.

``make_pipeline`` builds one stream of examples for the whole job and gives each process its
share of it::

    epoch e:  position p = e * N + i  ->  source index  shuffle_e(i)     (one global permutation)
    process k of P reads positions k, k + P, k + 2P, ...                 (disjoint, covering)
    record  = source[index];  example = transform(record, ExampleKey(seed, e, index))
    skipped examples (``Skip`` markers) are counted per reason and dropped;
    examples are stacked into per-process batches of ``global_batch_size / P``.

Every random draw depends on ``(seed, epoch, index)`` only, never on the process, the device or
the worker (docs/architecture.md, principle 6): global batch ``b`` holds the same examples on 1
or 4 hosts (in another order) as long as none is skipped. Read threads or worker processes
(``worker_count > 0``) read + transform chunks of ``chunk_size`` consecutive examples of the
shard (one message per chunk); un-chunking, skip counting and batching run after them in the
main process, so the batches depend neither on ``worker_count`` nor on ``chunk_size``.

The iterator's ``get_state()`` is a small JSON-serialisable dict (positions, skip counts and a
fingerprint of the settings); ``set_state()`` on a fresh iterator of the same pipeline resumes so
that it yields exactly the batches the uninterrupted iterator would have yielded next. Iterators
are ``grain.DatasetIterator`` subclasses, so grain's and orbax's checkpoint handlers take them.

Worker processes are started with ``spawn``: the launching script needs an
``if __name__ == "__main__":`` guard, and absl flags are marked parsed when they are not yet (grain
reads its settings from absl flags).
"""

from __future__ import annotations

import collections
import dataclasses
from collections.abc import Mapping
from typing import Any

import grain
import numpy as np

from jaxalign.data.example_cache import ExampleCache
from jaxalign.data.transforms import SKIP_FIELD, BadExample, ExampleKey, Skip, Transform
from jaxalign.errors import DataError

STATE_VERSION = 1
# Settings that states saved before they existed lack, with the value those states imply.
OLDER_SETTINGS = {"start": 0}


def _shuffle_seed(seed: int) -> int:
    """A 32-bit shuffle seed mixed from ``seed`` (grain reshuffles epoch ``e`` with seed + e;
    mixing keeps seed ``s`` epoch 1 from repeating seed ``s + 1`` epoch 0)."""
    return int(np.random.SeedSequence([seed, 0x5EED]).generate_state(1)[0])


@dataclasses.dataclass(frozen=True)
class _EpochAndIndex:
    """``(position in the stream, source index) -> (epoch, source index)``."""

    num_records: int

    def __call__(self, position: int, index: int) -> tuple[int, int]:
        return position // self.num_records, int(index)


def _where(record: Any, index: int) -> str:
    """``"key 000123 in /data/s0.tar"``: where a skipped record came from, for messages."""
    if not isinstance(record, Mapping):
        return f"index {index}"
    key, url = record.get("__key__"), record.get("__url__")
    return f"key {key}" + (f" in {url}" if url else "") if key is not None else f"index {index}"


@dataclasses.dataclass(frozen=True)
class _ReadAndTransform:
    """``(epoch, index) -> transform(source[index], ExampleKey(seed, epoch, index))``, with a
    record flagged by its source (or a ``BadExample`` raised by the transform) as ``Skip``."""

    source: Any
    transform: Transform
    seed: int

    def __call__(self, epoch_and_index: tuple[int, int]) -> Any:
        epoch, index = epoch_and_index
        record = self.source[index]
        if isinstance(record, Mapping) and record.get(SKIP_FIELD):
            return Skip(str(record[SKIP_FIELD]), _where(record, index))
        try:
            out = self.transform(record, ExampleKey(self.seed, epoch, index))
        except BadExample as bad:
            return Skip(bad.reason, _where(record, index))
        if out is None:
            raise TypeError(
                f"transform {self.transform!r} returned None for index {index}; return a dict "
                "of arrays or jaxalign.data.transforms.Skip(reason)"
            )
        if isinstance(out, Skip) and not out.where:
            return Skip(out.reason, _where(record, index))
        return out


class TooManySkipped(DataError):
    """``max_skipped_in_a_row`` examples in a row were skipped as bad: the data is unusable."""


class _UnchunkIterDataset(grain.IterDataset):
    """Chunks (lists of examples or ``Skip`` markers) -> examples; markers are dropped and
    counted per reason in the iterator state; ``max_skipped_in_a_row`` markers in a row raise
    ``TooManySkipped`` naming ``source_name``."""

    def __init__(self, parent: grain.IterDataset, max_skipped_in_a_row: int, source_name: str):
        super().__init__(parent)
        self.max_skipped_in_a_row = max_skipped_in_a_row
        self.source_name = source_name

    def __iter__(self) -> _UnchunkIterator:
        return _UnchunkIterator(
            self._parent.__iter__(), self.max_skipped_in_a_row, self.source_name
        )

    def __str__(self) -> str:
        return "UnchunkIterDataset"


class _UnchunkIterator(grain.DatasetIterator):
    """State: the parent's state before the current chunk, the offset in it, the skip counts."""

    def __init__(self, parent: grain.DatasetIterator, max_in_a_row: int, source_name: str):
        super().__init__(parent)
        self._skipped: collections.Counter[str] = collections.Counter()
        self._chunk: list[Any] = []
        self._offset = 0
        self._chunk_start: Any = None
        self._max_in_a_row, self._source_name = max_in_a_row, source_name
        self._streak: collections.Counter[str] = collections.Counter()

    def __next__(self) -> Any:
        while True:
            if self._offset >= len(self._chunk):
                self._chunk_start = self._parent.get_state()
                self._chunk = list(next(self._parent))
                self._offset = 0
                continue
            element = self._chunk[self._offset]
            self._offset += 1
            if isinstance(element, Skip):
                self._skipped[element.reason] += 1
                self._count_streak(element)
                continue
            self._streak.clear()
            return element

    def _count_streak(self, skip: Skip) -> None:
        self._streak[skip.reason] += 1
        in_a_row = sum(self._streak.values())
        if in_a_row >= self._max_in_a_row:
            reasons = ", ".join(f"{reason} {n}" for reason, n in self._streak.most_common())
            raise TooManySkipped(
                f"{in_a_row} examples in a row were skipped as bad (max_skipped_in_a_row="
                f"{self._max_in_a_row}) reading {self._source_name}: {reasons}; the last was "
                f"{skip.reason} at {skip.where or 'an unknown place'}. Check the data"
            )

    def get_state(self) -> dict[str, Any]:
        if self._offset >= len(self._chunk):  # between chunks
            parent, offset = self._parent.get_state(), 0
        else:
            parent, offset = self._chunk_start, self._offset
        return {"parent": parent, "offset": offset, "skipped": dict(sorted(self._skipped.items()))}

    def set_state(self, state: dict[str, Any]) -> None:
        self._parent.set_state(state["parent"])
        self._chunk_start, self._chunk, self._offset = state["parent"], [], 0
        if state["offset"]:  # re-read the current chunk, past what was already used
            self._chunk = list(next(self._parent))
            self._offset = int(state["offset"])
        self._skipped = collections.Counter({str(k): int(v) for k, v in state["skipped"].items()})
        self._streak.clear()


class Pipeline(grain.IterDataset):
    """The per-process stream of batches (an ``IterDataset``; iterate it for batches).

    Each batch is the transform's dict with a leading ``[per_process_batch_size]`` axis, e.g.
    ``{"image": [b, H, W, 3] float32|uint8, "ids": [b, L] int32, "mask": [b, L] int32}``.
    ``num_records`` is the source's length, ``source_name`` its description.
    """

    def __init__(
        self,
        parent: grain.IterDataset,
        fingerprint: dict[str, Any],
        source_name: str,
        arguments: dict[str, Any],
    ):
        super().__init__(parent)
        self.fingerprint = fingerprint
        self._arguments = arguments  # make_pipeline's, to rebuild at another start
        self.per_process_batch_size: int = fingerprint["per_process_batch_size"]
        self.process_index: int = fingerprint["process_index"]
        self.process_count: int = fingerprint["process_count"]
        self.num_records: int = fingerprint["num_records"]
        self.source_name = source_name

    def __iter__(self) -> PipelineIterator:
        return PipelineIterator(self._parent.__iter__(), self.fingerprint)

    def at(self, start: int) -> Pipeline:
        """The same pipeline with its shards beginning at stream position ``start``."""
        return make_pipeline(**{**self._arguments, "start": int(start)})

    def __str__(self) -> str:
        return f"Pipeline({self.fingerprint})"


class PipelineIterator(grain.DatasetIterator):
    """Iterator over batches with checkpointable state and skip counts.

    ``get_state()`` -> ``{"version", "batches", "settings", "pipeline"}``, plain JSON types;
    ``set_state(state)`` restores it (refusing, with the key named, a state saved under other
    settings: seed, batch size, process index/count, source length, epochs, workers).
    ``close()`` (inherited) stops the prefetch thread and worker processes.
    """

    def __init__(self, parent: grain.DatasetIterator, fingerprint: dict[str, Any]):
        super().__init__(parent)
        self._fingerprint = fingerprint
        self._batches = 0

    def __next__(self) -> dict[str, np.ndarray]:
        batch = next(self._parent)
        self._batches += 1
        return batch

    def get_state(self) -> dict[str, Any]:
        return {
            "version": STATE_VERSION,
            "batches": self._batches,
            "settings": dict(self._fingerprint),
            "pipeline": self._parent.get_state(),
        }

    def set_state(self, state: dict[str, Any]) -> None:
        if state.get("version") != STATE_VERSION:
            raise ValueError(f"pipeline state version {state.get('version')!r} != {STATE_VERSION}")
        for key, value in self._fingerprint.items():
            saved = state["settings"].get(key, OLDER_SETTINGS.get(key))
            if saved != value:
                raise ValueError(
                    f"pipeline state was saved with {key}={saved!r}, this pipeline has "
                    f"{key}={value!r}; an exact resume needs the same settings"
                )
        self._parent.set_state(state["pipeline"])
        self._batches = int(state["batches"])

    @property
    def batches(self) -> int:
        """Batches yielded so far (restored by ``set_state``; an elastic resume sets it)."""
        return self._batches

    @batches.setter
    def batches(self, value: int) -> None:
        self._batches = int(value)

    def skip_counts(self) -> dict[str, int]:
        """Examples skipped so far by this process, per reason, as of the last yielded batch."""
        return skip_counts_of(self._parent.get_state())

    def metrics(self) -> dict[str, int]:
        """``{"data/batches", "data/examples", "data/skipped", "data/skipped/<reason>"...}``
        for this process (examples: those yielded in batches)."""
        counts = self.skip_counts()
        out = {
            "data/batches": self._batches,
            "data/examples": self._batches * self._fingerprint["per_process_batch_size"],
            "data/skipped": sum(counts.values()),
        }
        out.update({f"data/skipped/{reason}": n for reason, n in counts.items()})
        return out

    def __str__(self) -> str:
        return "PipelineIterator"


def skip_counts_of(state: dict[str, Any]) -> dict[str, int]:
    """The per-reason skip counts in a pipeline's saved state (``get_state()["pipeline"]``)."""
    while "skipped" not in state:  # under the (thread-prefetch, batch) wrappers
        state = state["parent"]
    return {str(reason): int(n) for reason, n in state["skipped"].items()}


def _ensure_absl_flags_parsed() -> None:
    """grain reads its settings from absl flags; under pytest or a plain script nobody parsed
    them, and worker processes would fail. Mark them parsed with their defaults."""
    from absl import flags

    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()


def make_pipeline(
    source: Any,
    *,
    seed: int,
    global_batch_size: int,
    transform: Transform,
    process_index: int | None = None,
    process_count: int | None = None,
    worker_count: int = 0,
    prefetch: int = 2,
    num_epochs: int | None = None,
    drop_remainder: bool = True,
    read_options: grain.ReadOptions | None = None,
    worker_buffer_size: int = 2,
    chunk_size: int = 16,
    max_skipped_in_a_row: int = 1000,
    start: int = 0,
    cache: ExampleCache | None = None,
) -> Pipeline:
    """Builds this process's stream of batches over a random-access ``source``.

    Args:
      source: ``len(source)`` and ``source[i] -> record`` (see :mod:`jaxalign.data.sources`).
      seed: shuffles (one permutation of the whole source per epoch) and seeds every example's
        augmentation as ``(seed, epoch, index)``; in ``[0, 2**32)``.
      global_batch_size: examples per step over all processes; each process gets
        ``global_batch_size / process_count`` (a ValueError when it does not divide).
      transform: ``transform(record, ExampleKey) -> dict of arrays | Skip`` (see
        :mod:`jaxalign.data.transforms`); must be picklable when ``worker_count > 0``.
      process_index, process_count: this process's shard; ``jax.process_index()`` of
        ``jax.process_count()`` by default (pass them to simulate hosts in tests).
      worker_count: worker processes running read + transform (0: in this process, on
        ``read_options.num_threads`` threads).
      prefetch: batches prepared ahead on a background thread (0: none).
      num_epochs: passes over the source; ``None`` repeats forever (train by step count).
      drop_remainder: drop the last, smaller batch of a finite stream.
      read_options: grain ``ReadOptions`` for the read + transform stage (per process; default
        4 threads, 8 chunks buffered).
      worker_buffer_size: chunks each worker process prepares ahead.
      chunk_size: consecutive examples of the shard read + transformed together (by one read
        thread or worker, sent to this process as one message); the batches do not depend on it.
      max_skipped_in_a_row: this many examples skipped in a row (no good one between) raise
        ``TooManySkipped`` (a ``DataError``) from ``next()``, naming the source, the reasons
        and where the last one was: data that is all bad stops the run instead of spinning.
      start: the stream position the shards begin at (process k reads ``start + k``, ``start
        + k + P``, ...); 0 for a new run. ``Pipeline.at`` rebuilds a pipeline at another start
        (an elastic resume, :mod:`jaxalign.data.elastic`).
      cache: an :mod:`~jaxalign.data.example_cache` ``ExampleCache`` (``uses_key`` False).

    Returns:
      A :class:`Pipeline`; ``iter(pipeline)`` gives a :class:`PipelineIterator` of batches
      ``{"image": [b, H, W, 3], ...}`` with ``b = global_batch_size / process_count``.

    Skipped examples are replaced by the next ones of this process's shard, so with skips the
    shards drift apart in position (each still reads each of its examples once per epoch). With
    a finite ``num_epochs`` processes may then yield different numbers of batches: multi-host
    training should use ``num_epochs=None`` and stop at a step count.
    """
    arguments = dict(locals())  # the parameters, for Pipeline.at (nothing else is defined yet)
    if process_index is None or process_count is None:
        import jax

        process_index = jax.process_index() if process_index is None else process_index
        process_count = jax.process_count() if process_count is None else process_count
    if not 0 <= process_index < process_count:
        raise ValueError(f"process_index={process_index} not in [0, {process_count})")
    if global_batch_size < 1 or global_batch_size % process_count:
        raise ValueError(
            f"global_batch_size={global_batch_size} must be a positive multiple of "
            f"process_count={process_count} (each process loads an equal share)"
        )
    if not 0 <= seed < 2**32:
        raise ValueError(f"seed={seed} must be in [0, 2**32)")
    if num_epochs is not None and num_epochs < 1:
        raise ValueError(f"num_epochs={num_epochs} must be >= 1 or None (forever)")
    if start < 0:
        raise ValueError(f"start={start} must be >= 0")
    if max_skipped_in_a_row < 1:
        raise ValueError(f"max_skipped_in_a_row={max_skipped_in_a_row} must be >= 1")
    if worker_count < 0 or prefetch < 0 or chunk_size < 1:
        raise ValueError(
            f"worker_count={worker_count} and prefetch={prefetch} must be >= 0, "
            f"chunk_size={chunk_size} >= 1"
        )
    num_records = len(source)
    if num_records == 0:
        raise ValueError(f"make_pipeline: source {source!r} is empty")
    per_process = global_batch_size // process_count

    ds = grain.MapDataset.range(num_records).shuffle(seed=_shuffle_seed(seed))
    ds = ds.repeat(num_epochs)  # epoch e reshuffles with seed + e
    ds = ds.map_with_index(_EpochAndIndex(num_records))
    ds = ds[start + process_index :: process_count]
    read = _ReadAndTransform(source, transform, seed)
    ds = ds.map(read if cache is None else cache.serving(read, source=source, transform=transform))
    ds = ds.batch(chunk_size, batch_fn=list)  # the unit of work of a thread / worker

    read_options = read_options or grain.ReadOptions(num_threads=4, prefetch_buffer_size=8)
    stream = ds.to_iter_dataset(read_options)
    if worker_count > 0:
        _ensure_absl_flags_parsed()
        stream = stream.mp_prefetch(
            grain.MultiprocessingOptions(
                num_workers=worker_count, per_worker_buffer_size=worker_buffer_size
            )
        )
    source_name = f"{source!r} ({num_records} records)"
    stream = _UnchunkIterDataset(stream, max_skipped_in_a_row, source_name)
    stream = stream.batch(per_process, drop_remainder=drop_remainder)
    if prefetch > 0:
        stream = grain.experimental.ThreadPrefetchIterDataset(stream, prefetch_buffer_size=prefetch)
    fingerprint = {
        "seed": int(seed),
        "global_batch_size": int(global_batch_size),
        "process_index": int(process_index),
        "process_count": int(process_count),
        "per_process_batch_size": per_process,
        "num_records": int(num_records),
        "num_epochs": num_epochs,
        "worker_count": int(worker_count),  # these two shape the saved state
        "chunk_size": int(chunk_size),
        "start": int(start),
    }
    return Pipeline(stream, fingerprint, source_name, arguments)


def to_global_array(batch: Mapping[str, Any], mesh: Any) -> dict[str, Any]:
    """This process's batch -> global ``jax.Array``s sharded over the mesh's batch axes.

    Each leaf ``[b, ...]`` (``b`` = per-process batch) becomes ``[b * process_count, ...]`` with
    sharding ``batch_sharding(mesh)``: batch over (``data``, ``fsdp``), replicated over
    ``tensor``. Built with ``jax.make_array_from_process_local_data``, so each process passes
    only its own rows.
    """
    import jax

    from jaxalign.parallel.mesh import batch_shard_count, batch_sharding, describe_mesh

    sharding = batch_sharding(mesh)
    shards = batch_shard_count(mesh)
    local_shards = max(1, shards // jax.process_count())

    def put(x: Any) -> jax.Array:
        x = np.asarray(x)
        if x.ndim == 0 or x.shape[0] % local_shards:
            raise ValueError(
                f"to_global_array: a leaf of shape {x.shape} cannot be split over the "
                f"{local_shards} batch shards this process holds on {describe_mesh(mesh)}"
            )
        return jax.make_array_from_process_local_data(sharding, x)

    return jax.tree.map(put, dict(batch))
