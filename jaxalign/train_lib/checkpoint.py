"""Checkpoints: the train state and every process's data-iterator position, saved together.

``Checkpointer`` wraps one orbax ``CheckpointManager`` under ``workdir/checkpoints``. A step's
checkpoint holds two items:

- ``state``: the ``TrainState`` pytree (parameters, optimizer state, step, non-finite counters),
  written asynchronously (the arrays are copied off the devices before ``save`` returns, then
  written in the background while training goes on) and restored straight into the shardings of
  the running mesh;
- ``data``: ``{"process_<i>": iterator state}`` for every process, JSON, gathered when the save
  is asked for, so the position matches the state's step exactly.

orbax writes each checkpoint into a temporary directory and renames it when complete (on an
object store such as ``gs://``, which cannot rename, into the step's directory with a
``commit_success.txt`` written last), so a process killed mid-save leaves no checkpoint that
looks complete: ``latest_step`` and ``restore`` only ever see complete checkpoints. The
directory is reached through ``etils.epath`` (a local path or a URI). ``restore_part`` reads
only some subtrees of the state (the parameters of a run to transfer or evaluate, never its
optimizer moments), and ``state_metadata`` the saved shapes without any array.

What can still go wrong, and what happens:

- a checkpoint damaged after it was written (a truncated or deleted file): ``restore`` tries the
  checkpoints newest first and takes the first that reads; the newer, unreadable ones are moved
  to ``workdir/corrupt_checkpoints/`` (never deleted) and named in the returned notes. When none
  reads, nothing is moved and a ``DataError`` names each checkpoint and its error;
- a background save that fails (a full disk): ``check_saves`` (called at every step) reports it
  in one line as soon as the write ends, and removes the partial write; orbax's own multi-line
  error logs are left out (``_QuietOrbaxErrors``).
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import time
from typing import Any

import jax
import orbax.checkpoint as ocp
from etils import epath

from jaxalign.errors import ConfigError, DataError
from jaxalign.parallel.multihost import gather_json, meet
from jaxalign.train_lib.workdir import is_uri

STATE, DATA = "state", "data"
CORRUPT_DIRNAME = "corrupt_checkpoints"


def _short(error: BaseException, limit: int = 320) -> str:
    """An exception as one line: its type and its first line, the middle cut when long (the
    start says what failed, the end usually why: "No space left on device")."""
    lines = str(error).strip().splitlines()
    text = lines[0] if lines else ""
    for noise in ("[tensorstore_spec", "[source locations", "See full TensorStore details"):
        text = text.split(noise)[0].rstrip()  # tensorstore's JSON spec and C++ source lines
    if len(text) > limit:
        text = text[: limit // 3] + " ... " + text[-(2 * limit) // 3 :]
    return f"{type(error).__name__}: {text}"


class _QuietOrbaxErrors(logging.Filter):
    """Drops orbax's error logs of a failed save, each with a traceback (on the ``absl`` logger,
    prefixed ``[process=N]``; on ``asyncio``, its write futures' "Future exception was never
    retrieved"): the ``Checkpointer`` reports the same failure in one line itself."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.ERROR:
            return True
        first = str(record.msg).split("\n", 1)[0]
        return not (first.startswith("[process=") or "exception was never retrieved" in first)


def _quiet_orbax_errors() -> None:
    for name in ("absl", "asyncio"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, _QuietOrbaxErrors) for f in logger.filters):
            logger.addFilter(_QuietOrbaxErrors())
    if not getattr(sys.unraisablehook, "jaxalign_quiet", False):
        sys.unraisablehook = _quiet_closed_loop(sys.unraisablehook)


def _quiet_closed_loop(previous: Any) -> Any:
    """An unraisable-exception hook that drops "Event loop is closed" (raised in tensorstore's
    callbacks into orbax's event loop after a failed save closed it) and passes on the rest."""

    def hook(unraisable: Any) -> None:
        value = unraisable.exc_value
        if isinstance(value, RuntimeError) and str(value) == "Event loop is closed":
            return
        previous(unraisable)

    hook.jaxalign_quiet = True  # type: ignore[attr-defined]
    return hook


def _move_tree(source: epath.Path, target: epath.Path) -> None:
    """Moves the directory ``source`` to ``target`` (its parent created): renamed on a local
    disk; on an object store (no directory rename), each file copied, then the source removed."""
    target.parent.mkdir(parents=True, exist_ok=True)
    if not is_uri(source):
        source.rename(target)
        return
    for directory, _, files in source.walk():  # (no recursive glob on an object store)
        into = target / os.path.relpath(os.fspath(directory), os.fspath(source))
        into.mkdir(parents=True, exist_ok=True)
        for name in files:
            (directory / name).copy(into / name)
    source.rmtree()


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
        _quiet_orbax_errors()
        self._read_only = read_only
        self._saving: int | None = None  # the step of a save not yet known to have ended
        self._failures: list[str] = []  # failed saves not yet reported by check_saves
        self.skipped: list[str] = []  # what the last restore_part passed over
        self.failed_in_a_row = 0  # saves that failed since the last one that succeeded
        self._failed_steps: list[int | None] = []  # steps whose save failed (partial writes)
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
        data = {f"process_{i}": s for i, s in enumerate(gather_json(data_state))}
        self._note(self.wait())  # one save at a time: the previous one's outcome known first
        saved = self._manager.save(
            step,
            args=ocp.args.Composite(
                **{STATE: ocp.args.StandardSave(state), DATA: ocp.args.JsonSave(data)}
            ),
            force=True,
        )
        self._saving = step if saved else None
        return saved

    def restore(
        self, abstract_state: Any, step: int | None = None
    ) -> tuple[Any, Any, int, list[str]]:
        """``(state, every process's data-iterator state, step, notes)`` of checkpoint ``step``
        (the data states as ``{"process_<k>": state}``, for ``jaxalign.data.elastic.resume``),
        by default of the newest checkpoint that reads (see the module docstring); ``notes``
        name each newer checkpoint that did not read, why, and where it was moved.

        ``abstract_state``: ``jax.ShapeDtypeStruct``s with shardings (``jax.eval_shape`` of the
        state's init, with the state shardings), so arrays land sharded on the current mesh.

        Raises:
          FileNotFoundError: no complete checkpoint in the directory (or no ``step``).
          ConfigError: the checkpoint holds no data positions (not a dict of processes).
          DataError: no checkpoint reads (each is named with its error; none is moved).
        """
        steps = [self._step(step)] if step is not None else sorted(self.all_steps(), reverse=True)
        if not steps:
            self._step(None)  # raises, naming the directory
        failures: list[tuple[int, str]] = []
        for candidate in steps:
            try:
                restored = self._manager.restore(
                    candidate,
                    args=ocp.args.Composite(
                        **{
                            STATE: ocp.args.StandardRestore(abstract_state),
                            DATA: ocp.args.JsonRestore(),
                        }
                    ),
                )
            except Exception as error:  # a damaged checkpoint: try the one before
                failures.append((candidate, _short(error)))
                continue
            data = restored[DATA]
            if not isinstance(data, dict) or not data:
                raise ConfigError(
                    f"checkpoint {candidate} in {self.directory!r} holds no data positions"
                )
            return restored[STATE], data, candidate, self._set_aside(failures)
        raise DataError(
            f"no checkpoint in {self.directory!r} can be read: "
            + "; ".join(f"step {s}: {why}" for s, why in failures)
        )

    def _set_aside(self, failures: list[tuple[int, str]]) -> list[str]:
        """Moves unreadable checkpoints to ``corrupt_checkpoints/`` beside the directory (when
        not read-only); one note per checkpoint."""
        notes = []
        parent = epath.Path(self.directory).parent / CORRUPT_DIRNAME
        for step, why in failures:
            source = epath.Path(self.directory) / str(step)
            if self._read_only:
                notes.append(f"checkpoint {source} skipped: it does not read ({why})")
                continue
            target = parent / f"{step}-{time.strftime('%Y%m%dT%H%M%S')}"
            if jax.process_index() == 0:
                _move_tree(source, target)
            notes.append(f"checkpoint {source} does not read ({why}); moved to {target}")
        if failures and not self._read_only:
            meet("corrupt checkpoints moved")
            self._manager.reload()
        return notes

    def all_steps(self) -> list[int]:
        """The steps of the complete checkpoints, oldest first."""
        return sorted(self._manager.all_steps())

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
        try:
            return handler.metadata(epath.Path(self.directory) / str(step) / STATE).tree, step
        except Exception as error:
            raise DataError(
                f"checkpoint {step} in {self.directory!r} does not read: {_short(error)}"
            ) from None

    def restore_part(self, abstract: dict[str, Any], step: int | None = None) -> tuple[Any, int]:
        """``(part, step)``: only the subtrees of the saved state that ``abstract`` names
        (e.g. ``{"params": ..., "model_state": ...}``, never the optimizer state), as
        ``jax.ShapeDtypeStruct``s with shardings, restored into those shardings. Without
        ``step``, from the newest checkpoint that reads (nothing is moved); DataError when none
        does; ``skipped`` then names each newer checkpoint passed over, and why."""
        steps = [self._step(step)] if step is not None else sorted(self.all_steps(), reverse=True)
        if not steps:
            self._step(None)  # raises, naming the directory
        checkpointer = ocp.Checkpointer(ocp.PyTreeCheckpointHandler())
        restore_args = ocp.checkpoint_utils.construct_restore_args(abstract)
        failures = []
        for candidate in steps:
            try:
                part = checkpointer.restore(
                    epath.Path(self.directory) / str(candidate) / STATE,
                    args=ocp.args.PyTreeRestore(
                        item=abstract, restore_args=restore_args, partial_restore=True
                    ),
                )
            except Exception as error:
                if step is not None:
                    raise DataError(
                        f"checkpoint {candidate} in {self.directory!r} does not read: "
                        f"{_short(error)}"
                    ) from None
                failures.append((candidate, _short(error)))
                continue
            self.skipped = [
                f"checkpoint {self.directory}/{s} skipped: it does not read ({why})"
                for s, why in failures
            ]
            return part, candidate
        raise DataError(
            f"no checkpoint in {self.directory!r} can be read: "
            + "; ".join(f"step {s}: {why}" for s, why in failures)
        )

    def reached_preemption(self, step: int) -> bool:
        """Whether all processes agreed to stop at ``step`` after a preemption notice (jax's
        preemption sync point, which ``jax.distributed.initialize`` sets up for SIGTERM). Every
        process must call it at every step."""
        return self._manager.reached_preemption(step)

    def check_saves(self, *, wait: bool = False) -> list[str]:
        """One line per save found failed since the last call (a save still writing is waited
        for only with ``wait``); ``failed_in_a_row`` counts them until a save succeeds. Cheap
        without ``wait``: call it at every step."""
        if self._saving is not None and (wait or not self._manager.is_saving_in_progress()):
            self._note(self.wait())
        failures, self._failures = self._failures, []
        return failures

    def _note(self, failure: str | None) -> None:
        if failure:
            self._failures.append(failure)

    def wait(self) -> str | None:
        """Blocks until the background write is done; returns one line about it if it failed
        (its partial write removed), else None."""
        step, self._saving = self._saving, None
        try:
            self._manager.wait_until_finished()
        except Exception as error:
            self.failed_in_a_row += 1
            self._failed_steps.append(step)
            self._remove_partial_writes()
            self._manager.reload()
            return f"checkpoint {step} could not be saved in {self.directory}: {_short(error)}"
        if step is not None:
            self.failed_in_a_row = 0
        return None

    def _remove_partial_writes(self) -> None:
        """Deletes the temporary directories of failed saves (process 0)."""
        if jax.process_index() != 0:
            return
        failed = tuple(f"{s}." for s in self._failed_steps)
        for path in epath.Path(self.directory).iterdir():
            if "tmp" in path.name and path.name.startswith(failed):
                with contextlib.suppress(OSError):  # gone already
                    path.rmtree()

    def close(self) -> None:
        """Waits for the last save (a failure is kept for ``check_saves``) and closes; the
        partial writes of failed saves are removed again once orbax's writer threads have
        stopped (a thread may still have been writing when ``wait`` first removed them)."""
        self._note(self.wait())
        self._manager.close()
        if self._failed_steps:
            self._remove_partial_writes()
