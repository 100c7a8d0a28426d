"""Stopping on SIGTERM (preemption) or Ctrl-C at a step boundary, so the loop can save first.

One process: ``StopSignal`` installs handlers for SIGTERM and SIGINT that only set a flag; the
loop checks ``requested`` after each step, and every fraction of a second while it waits for a
batch, saves a checkpoint and stops. It is installed for the whole run, from set-up on, so a
signal during compilation (where an exception would crash XLA) also only sets the flag, seen
once compilation ends. A second Ctrl-C raises ``KeyboardInterrupt`` at once. The previous
handlers come back on leaving the ``with`` block.

Several processes must stop at the same step, or the save's collectives hang: there
``StopSignal`` installs nothing, and jax's own preemption notifier (set up for SIGTERM by
``jax.distributed.initialize``) is asked at every step whether all processes have agreed on a
step to stop at (``Checkpointer.reached_preemption``).

Signals can only be handled in the main thread; elsewhere nothing is installed.
"""

from __future__ import annotations

import signal
import threading
from typing import Any

import jax

# What a process killed by SIGTERM reports (128 + 15): schedulers that restart failed jobs
# (Kubernetes, SLURM --requeue) then restart it, and the restarted run resumes.
PREEMPTED_EXIT_CODE = 143


class StopSignal:
    """A flag set by SIGTERM / SIGINT (see the module docstring)."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self) -> None:
        self.requested: str | None = None  # the signal's name once one arrived
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> StopSignal:
        single = jax.process_count() == 1
        if single and threading.current_thread() is threading.main_thread():
            for sig in self.SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: Any) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def _handle(self, signum: int, frame: Any) -> None:
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.requested = signal.Signals(signum).name
