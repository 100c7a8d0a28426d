"""Stopping on SIGTERM (preemption) or Ctrl-C at a step boundary, so the loop can save first.

``StopSignal`` installs handlers for SIGTERM and SIGINT that only set a flag; the loop checks
``requested`` after each step, saves a checkpoint and returns. A second Ctrl-C raises
``KeyboardInterrupt`` at once. The previous handlers come back on ``restore`` (also on leaving
the ``with`` block). Signals can only be handled in the main thread; elsewhere nothing is
installed and ``requested`` stays False.
"""

from __future__ import annotations

import signal
import threading
from typing import Any

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
        if threading.current_thread() is threading.main_thread():
            for sig in self.SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: Any) -> None:
        self.restore()

    def _handle(self, signum: int, frame: Any) -> None:
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.requested = signal.Signals(signum).name

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()
