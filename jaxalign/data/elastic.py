"""Resuming a checkpoint's data stream, on the same number of processes or on another.

A checkpoint holds every process's iterator state (``{"process_<k>": state}``). ``resume``
gives this process the iterator that continues the job's stream:

- Same number of processes: each process restores its own state, and the batches from there
  on are exactly those of the uninterrupted run.
- Another number (P processes saved, P' restore; an *elastic* resume): process k of P read
  positions ``start + k, start + k + P, ...`` of the global stream (the global shuffle of each
  epoch, ``jaxalign.data.pipeline``); after ``b`` batches it has consumed ``n_k = b * G / P +
  s_k`` of them (``G`` the global batch, ``s_k`` the examples it skipped as bad). Every position
  below ``restart = start + P * max_k n_k`` was read by some process or lies in another
  process's lag, and none at or above it was read. The new job's shards begin at ``restart``:
  process k' of P' reads ``restart + k', restart + k' + P', ...``.

  So no example is seen twice, and without skips none is missed: ``restart = start + b * G``,
  and each global batch after the restore holds the very examples of the uninterrupted run's
  (in another order of rows). With skips, the positions a process that skipped fewer examples
  had not reached yet (``P * (max_k n_k - n_k)`` per process, at most ``P`` times the largest
  difference in skips) are dropped: each such example is missed for this epoch only. Skip
  counts start again from 0; the batch count continues.

The data settings that define the stream (seed, global batch, source length, epochs) must be
those the checkpoint was written with; a worker count or chunk size may change only on an
elastic resume (the positions, not the readers' states, carry over).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from jaxalign.data.pipeline import skip_counts_of
from jaxalign.errors import ConfigError

# Settings that only shape how each process reads its shard.
PER_PROCESS = {"process_index", "process_count", "per_process_batch_size", "start",
               "worker_count", "chunk_size"}  # fmt: skip


def consumed(state: Mapping[str, Any]) -> int:
    """Positions of its shard a process had read at a pipeline ``state``: the examples it
    batched and those it skipped."""
    settings = state["settings"]
    return int(state["batches"]) * int(settings["per_process_batch_size"]) + sum(
        skip_counts_of(state["pipeline"]).values()
    )


def restart_position(states: list[Mapping[str, Any]]) -> int:
    """The first stream position no process had read (see the module docstring)."""
    settings = states[0]["settings"]
    count, start = int(settings["process_count"]), int(settings.get("start", 0))
    return start + count * max(consumed(s) for s in states)


def _process_count(stream: Any) -> int:
    if hasattr(stream, "process_count"):
        return int(stream.process_count)
    import jax

    return jax.process_count()


def _resume_one(
    stream: Any, states: list[Mapping[str, Any]], process_index: int, name: str
) -> tuple[Any, int | None]:
    """``(iterator, restart position or None)``: one stream resumed from every process's state
    of it (None: the same number of processes, each from its own state)."""
    if len(states) == _process_count(stream):
        own = states[process_index]
        if hasattr(stream, "at"):  # a pipeline restarted elastically before starts there
            stream = stream.at(int(own["settings"].get("start", 0)))
        iterator = iter(stream)
        iterator.set_state(own)
        return iterator, None
    if not hasattr(stream, "at"):
        raise ConfigError(
            f"the checkpoint holds the data positions of {len(states)} processes, this run has "
            f"{_process_count(stream)}, and {name} cannot resume on another number of processes"
        )
    saved = states[0]["settings"]
    for key, value in stream.fingerprint.items():
        if key not in PER_PROCESS and saved.get(key) != value:
            raise ConfigError(
                f"{name}: the checkpoint's data stream has {key}={saved.get(key)!r}, this "
                f"run's {key}={value!r}; resuming needs the same stream"
            )
    restart = restart_position(states)
    iterator = iter(stream.at(restart))
    iterator.batches = int(states[0]["batches"])  # one per step, the same on every process
    return iterator, restart


def resume(stream: Any, saved: Mapping[str, Any], process_index: int) -> tuple[Any, str]:
    """``(iterator, note)``: ``stream``'s iterator continuing from ``saved`` (``{"process_<k>":
    iterator state}``, every process's) on process ``process_index``; the note ("" on the same
    number of processes) says where an elastic resume restarted the shards.

    ``stream`` is a ``Pipeline``, a ``ZippedStream`` (each named stream resumes on its own), or
    any iterable whose iterator has ``get_state`` / ``set_state`` (the same number of processes
    only).

    Raises:
      ConfigError: incomplete positions, a stream other than the checkpoint's (naming the
        setting), or one that cannot resume on another number of processes.
    """
    try:
        states = [saved[f"process_{k}"] for k in range(len(saved))]
    except KeyError:
        names = sorted(saved)
        raise ConfigError(f"the checkpoint's data positions are incomplete: {names}") from None
    streams = getattr(stream, "streams", None)
    if streams is None:
        iterator, restart = _resume_one(stream, states, process_index, "the data stream")
        restarts = {"": restart}
    else:
        from jaxalign.data.streams import ZippedIterator

        iterators, restarts = {}, {}
        for name, part in streams.items():
            part_states = [state[name] for state in states]
            iterators[name], restarts[name] = _resume_one(
                part, part_states, process_index, f"stream {name!r}"
            )
        iterator = ZippedIterator(iterators)
    if all(r is None for r in restarts.values()):
        return iterator, ""
    where = ", ".join(f"{name} {r}".strip() for name, r in restarts.items())

    def processes(count: int) -> str:
        return f"{count} process" + ("es" if count > 1 else "")

    return iterator, (
        f"data: the stream saved by {processes(len(states))} continues on this run's "
        f"{processes(_process_count(stream))}; the shards restart at stream position {where} "
        "(docs/scaling.md)"
    )
