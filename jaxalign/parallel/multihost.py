"""What processes of one run do together outside the compiled step: gather small JSON values,
and let process 0 go first on shared work (building a dataset on a shared disk)."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import jax
import numpy as np


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


def on_every_process(build: Callable[[], None]) -> None:
    """Runs ``build`` on process 0, then, after all processes meet, on the others: they find
    what process 0 built (a shared disk) or build their own copy (a local one)."""
    if jax.process_index() == 0:
        build()
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices("jaxalign: data prepared")
        if jax.process_index() > 0:
            build()
