"""A run's work directory: checked before anything is written, marked as a run, locked while used.

``open_workdir(path)`` is the first thing a training run does. It refuses (``WorkdirError``,
naming the directory):

- an empty path (an unset shell variable: never the current directory by accident);
- a path that is a file, or a directory that cannot be written;
- a directory that is neither empty nor a jaxalign run (it holds no ``jaxalign-run.json``
  marker; a run from before the marker existed, holding ``config.json`` and ``checkpoints/``,
  is marked): a run never writes over files it did not create;
- a directory another live process is training in.

The lock is an exclusive ``fcntl.flock`` on ``jaxalign-run.lock``, held until ``close``; the
kernel drops it when its process dies in any way (SIGKILL included), so a dead run's lock is
never stale. The file records the holder's host, pid and start time for the message a second run
gets. ``flock`` works on local disks and most network file systems; with several processes of
one run, only process 0 takes it.

The path may be a URI of an object store (``gs://bucket/runs/clip``, any ``etils.epath``
scheme): it is reached through ``etils.epath`` only, never ``os.path``. An object store has no
lock and no permission bits to check: a second run on the same URI is not refused, and a bucket
that cannot be written fails at the first write.
"""

from __future__ import annotations

import datetime
import fcntl
import json
import os
import socket
from typing import IO

from etils import epath

from jaxalign import __version__
from jaxalign.errors import WorkdirError

MARKER = "jaxalign-run.json"
LOCK = "jaxalign-run.lock"


def is_uri(path: str | os.PathLike) -> bool:
    """Whether ``path`` names an object-store location (``gs://...``), not a local or mounted
    path (which ``os`` functions may be used on)."""
    return "://" in os.fspath(path)


def absolute(path: str | os.PathLike) -> str:
    """``path`` as the run records it: a URI as it is, a local path with ``~`` expanded and
    made absolute (the same directory whatever the current one)."""
    path = os.fspath(path)
    return path if is_uri(path) else os.path.abspath(os.path.expanduser(path))


def _check_path(path: str) -> epath.Path:
    """The usable work directory ``path`` (created if absent; local paths made absolute), or
    WorkdirError."""
    if not path or not path.strip():
        raise WorkdirError(
            "--workdir is empty (an unset shell variable?); give the run's directory"
        )
    uri = is_uri(path)
    target = epath.Path(absolute(path))
    if target.exists() and not target.is_dir():
        raise WorkdirError(f"--workdir={target}: is a file, not a directory")
    try:
        target.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        reason = error.strerror or error
        raise WorkdirError(f"--workdir={target}: cannot create it ({reason})") from None
    if not uri and not os.access(target, os.W_OK | os.X_OK):
        raise WorkdirError(f"--workdir={target}: not writable; choose a directory you can write")
    return target


def _mark(path: epath.Path) -> None:
    """Claims an empty directory as a run, or checks that a non-empty one is one."""
    marker = path / MARKER
    if marker.is_file():
        return
    present = sorted(child.name for child in path.iterdir())
    if {"config.json", "checkpoints"} <= set(present):  # a run from before the marker existed
        present = []
    if present:
        shown = ", ".join(present[:5]) + (", ..." if len(present) > 5 else "")
        raise WorkdirError(
            f"--workdir={path}: holds files that are not a jaxalign run ({shown}; no {MARKER}); "
            "give an empty or new directory"
        )
    record = {
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "jaxalign": __version__,
    }
    if is_uri(path):  # an object is written whole or not at all
        marker.write_text(json.dumps(record) + "\n")
        return
    tmp = path / f"{MARKER}.{os.getpid()}.tmp"  # two runs starting at once each write their own
    tmp.write_text(json.dumps(record) + "\n")
    tmp.replace(marker)


class Workdir:
    """An opened work directory (``open_workdir``); ``close()`` releases its lock."""

    def __init__(self, path: str, lock_file: IO[str] | None):
        self.path = path
        self._lock_file = lock_file

    def close(self) -> None:
        if self._lock_file is not None:
            fcntl.flock(self._lock_file, fcntl.LOCK_UN)
            self._lock_file.close()
            self._lock_file = None

    def __enter__(self) -> Workdir:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _lock(path: str) -> IO[str]:
    """Takes the (local) directory's lock or raises WorkdirError naming the live holder."""
    lock_path = os.path.join(path, LOCK)
    try:
        f = open(lock_path, "a+")  # noqa: SIM115 (held open for the run's life)
    except OSError as error:
        raise WorkdirError(f"--workdir={path}: cannot open {lock_path} ({error})") from None
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.seek(0)
        holder = f.read().strip() or "another process"
        f.close()
        raise WorkdirError(
            f"--workdir={path}: another run is training there ({holder}); wait for it, stop "
            "it, or give another directory"
        ) from None
    except OSError as error:  # flock unsupported (some network file systems)
        f.close()
        raise WorkdirError(f"--workdir={path}: cannot lock {lock_path} ({error})") from None
    f.seek(0)
    f.truncate()
    started = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    f.write(f"pid {os.getpid()} on {socket.gethostname()}, started {started}\n")
    f.flush()
    return f


def open_workdir(path: str | os.PathLike, *, lead: bool = True) -> Workdir:
    """Checks, marks and locks the work directory ``path`` (see the module docstring).

    Args:
      path: the run's directory, local or a URI (``gs://...``); created when absent.
      lead: this process marks and locks it (process 0 of a run); the others only check it.

    Raises:
      WorkdirError: the path is empty, a file, not writable, a directory of other files, or
        locked by a live run.
    """
    target = _check_path(os.fspath(path))
    if not lead:
        return Workdir(os.fspath(target), None)
    if is_uri(target):  # no lock on an object store
        _mark(target)
        return Workdir(os.fspath(target), None)
    lock_file = _lock(os.fspath(target)) if (target / MARKER).is_file() else None
    if lock_file is None:  # an empty directory: mark it, then lock it
        _mark(target)
        lock_file = _lock(os.fspath(target))
    return Workdir(os.fspath(target), lock_file)
