"""Checkpoints: the train state and every process's data-iterator position, saved together.

``Checkpointer`` wraps one orbax ``CheckpointManager`` under ``workdir/checkpoints``. A step's
checkpoint holds two items:

- ``state``: the ``TrainState`` pytree (parameters, optimizer state, step, non-finite counters),
  written asynchronously (the arrays are copied off the devices before ``save`` returns, then
  written in the background while training goes on) and restored straight into the shardings of
  the running mesh;
- ``data``: ``{"process_<i>": iterator state}`` for every process, JSON, gathered when the save
  is asked for, so the position matches the state's step exactly.

orbax writes each checkpoint into a temporary directory and renames it when complete, so a
process killed mid-save leaves no step directory behind: ``latest_step`` and ``restore`` only
ever see complete checkpoints. ``restore_part`` reads only some subtrees of the state (the
parameters of a run to transfer or evaluate, never its optimizer moments), and
``state_metadata`` the saved shapes without any array.
"""

from __future__ import annotations

import json
import os
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from etils import epath

from jaxalign.schema import ConfigError

STATE, DATA = "state", "data"


def _gather_json(value: Any) -> list[Any]:
    """Every process's ``value`` (JSON-serialisable), in process order."""
    if jax.process_count() == 1:
        return [value]
    from jax.experimental import multihost_utils

    text = np.frombuffer(json.dumps(value).encode(), np.uint8)
    lengths = multihost_utils.process_allgather(np.int32(text.size))
    padded = np.zeros(int(np.max(lengths)), np.uint8)
    padded[: text.size] = text
    rows = multihost_utils.process_allgather(padded[None], tiled=True)
    return [json.loads(row[:n].tobytes()) for row, n in zip(rows, lengths, strict=True)]


class Checkpointer:
    """Saves and restores ``(state, data-iterator state)`` under ``directory``.

    Args:
      directory: where step directories go (``workdir/checkpoints``).
      keep: how many of the newest checkpoints to keep.
      asynchronous: write in the background (the default); ``False`` blocks in ``save``.
      read_only: only restore (``jaxalign eval``): creates and deletes nothing, so it can
        read the directory of a run that is still writing to it.
    """

    def __init__(
        self,
        directory: str | os.PathLike,
        *,
        keep: int,
        asynchronous: bool = True,
        read_only: bool = False,
    ):
        self.directory = os.fspath(directory)
        options = ocp.CheckpointManagerOptions(
            max_to_keep=keep,
            create=not read_only,
            read_only=read_only,
            cleanup_tmp_directories=not read_only,  # what a killed save left behind
            enable_async_checkpointing=asynchronous,
        )
        self._manager = ocp.CheckpointManager(
            self.directory, options=options, item_names=(STATE, DATA)
        )

    def latest_step(self) -> int | None:
        """The newest complete checkpoint's step, or None."""
        return self._manager.latest_step()

    def save(self, step: int, state: Any, data_state: Any) -> bool:
        """Saves ``(state, data_state)`` as checkpoint ``step``; False if it is already there.

        ``data_state`` is this process's iterator state (``iterator.get_state()``); every
        process must call ``save`` at the same steps.
        """
        if step in self._manager.all_steps():
            return False
        data = {f"process_{i}": s for i, s in enumerate(_gather_json(data_state))}
        return self._manager.save(
            step,
            args=ocp.args.Composite(
                **{STATE: ocp.args.StandardSave(state), DATA: ocp.args.JsonSave(data)}
            ),
            force=True,
        )

    def restore(self, abstract_state: Any, step: int | None = None) -> tuple[Any, Any, int]:
        """``(state, this process's data-iterator state, step)`` of checkpoint ``step`` (the
        newest by default).

        ``abstract_state``: ``jax.ShapeDtypeStruct``s with shardings (``jax.eval_shape`` of the
        state's init, with the state shardings), so arrays land sharded on the current mesh.

        Raises:
          FileNotFoundError: no complete checkpoint in the directory (or no ``step``).
          ConfigError: the checkpoint was written by a different number of processes.
        """
        step = self._step(step)
        restored = self._manager.restore(
            step,
            args=ocp.args.Composite(
                **{STATE: ocp.args.StandardRestore(abstract_state), DATA: ocp.args.JsonRestore()}
            ),
        )
        data = restored[DATA]
        key = f"process_{jax.process_index()}"
        if len(data) != jax.process_count() or key not in data:
            raise ConfigError(
                f"checkpoint {step} in {self.directory!r} holds the data positions of "
                f"{len(data)} processes; this run has {jax.process_count()}"
            )
        return restored[STATE], data[key], step

    def _step(self, step: int | None) -> int:
        step = self.latest_step() if step is None else step
        if step is None or step not in self._manager.all_steps():
            raise FileNotFoundError(
                f"no complete checkpoint{'' if step is None else f' at step {step}'} in "
                f"{self.directory!r} (steps there: {list(self._manager.all_steps())})"
            )
        return step

    def state_metadata(self, step: int | None = None) -> tuple[Any, int]:
        """``(tree, step)``: the saved state of checkpoint ``step`` (the newest by default) as
        nested dicts of ``ArrayMetadata`` (``.shape``, ``.dtype``), read without its arrays."""
        step = self._step(step)
        handler = ocp.PyTreeCheckpointHandler()
        return handler.metadata(epath.Path(self.directory) / str(step) / STATE).tree, step

    def restore_part(self, abstract: dict[str, Any], step: int | None = None) -> tuple[Any, int]:
        """``(part, step)``: only the subtrees of the saved state that ``abstract`` names
        (e.g. ``{"params": ..., "model_state": ...}``, never the optimizer state), as
        ``jax.ShapeDtypeStruct``s with shardings, restored into those shardings."""
        step = self._step(step)
        checkpointer = ocp.Checkpointer(ocp.PyTreeCheckpointHandler())
        restore_args = ocp.checkpoint_utils.construct_restore_args(abstract)
        part = checkpointer.restore(
            epath.Path(self.directory) / str(step) / STATE,
            args=ocp.args.PyTreeRestore(
                item=abstract, restore_args=restore_args, partial_restore=True
            ),
        )
        return part, step

    def reached_preemption(self, step: int) -> bool:
        """Whether all processes agreed to stop at ``step`` after a preemption notice (jax's
        preemption sync point, which ``jax.distributed.initialize`` sets up for SIGTERM). Every
        process must call it at every step."""
        return self._manager.reached_preemption(step)

    def wait(self) -> None:
        """Blocks until the background writes are done."""
        self._manager.wait_until_finished()

    def close(self) -> None:
        self._manager.close()
