"""The loop's wait for the next batch, which a stop request or slow data can interrupt.

A blocked ``next(iterator)`` cannot be interrupted reliably: a signal sent to a process with
many threads (XLA's, grain's) is often delivered to one of them, and the main thread's wait
then never wakes. So ``Fetcher`` runs ``next`` on one background thread and the main thread
waits for its answer in short slices, checking a ``should_stop`` callback between them and
calling ``on_slow`` once when the wait passes ``slow_after_s`` seconds.

Only one fetch is ever in flight, and ``get_state`` is only asked between fetches, so the
iterator is never used from two threads at once.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable
from typing import Any


class FetchInterrupted(Exception):
    """``should_stop()`` turned true while waiting; the fetch was abandoned."""


class Fetcher:
    """Fetches ``next(iterator)`` on a daemon thread, one at a time."""

    def __init__(self, iterator: Any):
        self.iterator = iterator
        self._requests: queue.Queue[bool] = queue.Queue()
        self._answers: queue.Queue[tuple[bool, Any]] = queue.Queue()
        self._busy = False
        self._thread = threading.Thread(target=self._serve, name="jaxalign-fetch", daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while self._requests.get():
            try:
                self._answers.put((True, next(self.iterator)))
            except BaseException as error:  # handed to the main thread, raised there
                self._answers.put((False, error))

    def next(
        self,
        should_stop: Callable[[], bool],
        *,
        slow_after_s: float = 120.0,
        on_slow: Callable[[float], None] | None = None,
        poll_s: float = 0.1,
    ) -> Any:
        """The next batch; raises what ``next`` raised, or ``FetchInterrupted`` when
        ``should_stop()`` turns true first (the fetch is then left running, abandoned)."""
        if not self._busy:
            self._requests.put(True)
            self._busy = True
        started = time.perf_counter()
        warned = False
        while True:
            try:
                ok, value = self._answers.get(timeout=poll_s)
            except queue.Empty:
                if should_stop():
                    raise FetchInterrupted from None
                waited = time.perf_counter() - started
                if on_slow is not None and not warned and waited > slow_after_s:
                    on_slow(waited)
                    warned = True
                continue
            self._busy = False
            if ok:
                return value
            raise value

    def close(self, timeout_s: float = 5.0) -> None:
        """Stops the thread: at once when idle, else once its fetch returns (waited for up to
        ``timeout_s``; a fetch stuck on dead data is left to the daemon thread)."""
        self._requests.put(False)
        self._thread.join(timeout_s)
