"""The trainer, recording what a resumed run restored and which examples it then trained on.

``launch/local.sh`` runs ``$PYTHON -m jaxalign train ...`` in every process; with ``PYTHON``
set to a script that runs ``python tests/restore_probe.py "$@"`` (``probe_interpreter``), each
process of a multi-process run writes, into ``$RESTORE_PROBE_DIR``:

- ``state_process_<k>.npz``: every shard of the parameters and optimizer state that process k
  holds right after the checkpoint is restored (``<part>/<leaf>/<shard>``, and the shard's
  place in the whole array as ``.../index``: one ``(start, stop)`` row per axis);
- ``batches_process_<k>.jsonl``: for each batch the resumed run asks for, one line: the batch's
  number and a fingerprint of each of its example rows (this process's share of the global
  batch, in order).

The test process puts ``recording_restore`` and ``recording_resume`` in place for runs in one
process.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from collections.abc import Callable
from typing import Any

import numpy as np

from tests.trainer_child import cache_on_every_process, child_interpreter


def fingerprints(batch: dict[str, Any]) -> list[str]:
    """One short hash per example of a CLIP batch: its image row (H, W, C), caption ids and
    mask (L,) together, the example's identity for comparing streams."""
    rows = zip(*(np.asarray(batch[key]) for key in ("image", "ids", "mask")), strict=True)
    return [hashlib.sha1(b"".join(a.tobytes() for a in row)).hexdigest()[:16] for row in rows]


class RecordingIterator:
    """``iterator``, appending each batch's ``fingerprints`` to ``path`` (JSON lines)."""

    def __init__(self, iterator: Any, path: str):
        self.iterator, self.path, self.count = iterator, path, 0

    def __next__(self):
        batch = next(self.iterator)
        self.count += 1
        with open(self.path, "a") as f:
            f.write(json.dumps({"n": self.count, "rows": fingerprints(batch)}) + "\n")
        return batch

    def __getattr__(self, name):  # get_state, set_state, metrics, close
        return getattr(self.iterator, name)


def recording_resume(directory: str) -> Callable[..., Any]:
    """``jaxalign.data.elastic.resume`` whose iterator records its batches into
    ``directory/batches_process_<k>.jsonl`` (to put in its place)."""
    from jaxalign.data import elastic

    resume = elastic.resume

    def recording(stream, saved, process_index):
        iterator, note = resume(stream, saved, process_index)
        path = os.path.join(directory, f"batches_process_{process_index}.jsonl")
        return RecordingIterator(iterator, path), note

    return recording


def read_batches(path) -> dict[int, list[str]]:
    """``{batch number: row fingerprints}`` of a ``batches_process_<k>.jsonl``."""
    with open(path) as f:
        rows = [json.loads(line) for line in f]
    return {row["n"]: row["rows"] for row in rows}


def recording_restore(directory: str) -> Callable[..., Any]:
    """``Checkpointer.restore`` that writes the shards of the restored parameters and optimizer
    state this process holds into ``directory/state_process_<k>.npz`` (to put in its place)."""
    import jax

    from jaxalign.train_lib.checkpoint import Checkpointer

    restore = Checkpointer.restore

    def recording(self, abstract_state, step=None):
        result = restore(self, abstract_state, step)
        arrays = {}
        for part in ("params", "opt_state"):
            for i, leaf in enumerate(jax.tree.leaves(getattr(result[0], part))):
                for j, shard in enumerate(leaf.addressable_shards):
                    key = f"{part}/{i}/{j}"
                    arrays[key] = np.asarray(shard.data)
                    arrays[f"{key}/index"] = np.array(
                        [s.indices(n)[:2] for s, n in zip(shard.index, leaf.shape, strict=True)],
                        dtype=np.int64,
                    ).reshape(-1, 2)
        np.savez(os.path.join(directory, f"state_process_{jax.process_index()}.npz"), **arrays)
        return result

    return recording


def restored_shards(path, part: str) -> dict[int, list[tuple[tuple[slice, ...], np.ndarray]]]:
    """``{leaf number: [(index, shard data), ...]}`` of ``part`` in a ``state_process_<k>.npz``."""
    shards: dict[int, list] = {}
    with np.load(path) as arrays:
        for key in arrays.files:
            name, leaf, _, *rest = key.split("/")
            if name == part and not rest:
                index = tuple(slice(a, b) for a, b in arrays[f"{key}/index"])
                shards.setdefault(int(leaf), []).append((index, arrays[key]))
    return shards


def probe_interpreter(directory) -> str:
    """Writes ``directory/python``: an interpreter for ``launch/local.sh``'s ``PYTHON`` that
    runs the trainer under this probe, recording into ``directory``; returns its path."""
    return child_interpreter(directory, "tests.restore_probe", RESTORE_PROBE_DIR=directory)


def main(argv: list[str]) -> int:
    if argv[:2] != ["-m", "jaxalign"]:
        raise SystemExit(f"usage: restore_probe.py -m jaxalign train ...; got {argv[:2]}")
    directory = os.environ["RESTORE_PROBE_DIR"]
    cache_on_every_process()
    from jaxalign import cli
    from jaxalign.data import elastic
    from jaxalign.train_lib.checkpoint import Checkpointer

    Checkpointer.restore = recording_restore(directory)
    elastic.resume = recording_resume(directory)

    return cli.main(argv[2:])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
