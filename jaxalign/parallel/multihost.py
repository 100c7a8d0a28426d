"""What processes of one run do together outside the compiled step: gather small JSON values,
wait for each other, and let process 0 go first on shared work (building a dataset on a shared
disk)."""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable
from typing import Any

import jax
import numpy as np

# Barrier names are single-use in the coordination service: each meeting gets a number.
_MEETINGS = itertools.count()


def gather_json(value: Any) -> list[Any]:
    """Every process's ``value`` (JSON-serialisable), in process order (a collective: every
    process calls it at the same point)."""
    if jax.process_count() == 1:
        return [value]
    from jax.experimental import multihost_utils

    text = np.frombuffer(json.dumps(value).encode(), np.uint8)
    lengths = multihost_utils.process_allgather(np.int32(text.size))
    padded = np.zeros(int(np.max(lengths)), np.uint8)
    padded[: text.size] = text
    rows = multihost_utils.process_allgather(padded[None], tiled=True)
    return [json.loads(row[:n].tobytes()) for row, n in zip(rows, lengths, strict=True)]


def meet(name: str, *, timeout_s: float = 1800) -> None:
    """Every process waits here until all have arrived (nothing with one process).

    The coordination service's barrier (``jax.distributed``'s client), not a collective: a
    collective on CPU (gloo) gives up when its peers arrive more than 30 s apart, which a
    process that compiles or builds data slower than the others (a loaded machine) exceeds.
    Call it before the first collective that follows uneven work. Every process calls it at
    the same point, with the same ``name``.
    """
    if jax.process_count() == 1:
        return
    from orbax.checkpoint import multihost as orbax_multihost

    wait = orbax_multihost.get_barrier_sync_fn()
    wait(key=f"jaxalign/{next(_MEETINGS)}/{name}", timeout_ms=int(timeout_s * 1000))


def on_every_process(build: Callable[[], None]) -> None:
    """Runs ``build`` on process 0, then, after all processes meet, on the others: they find
    what process 0 built (a shared disk) or build their own copy (a local one)."""
    if jax.process_index() == 0:
        build()
    meet("data prepared")
    if jax.process_index() > 0:
        build()
