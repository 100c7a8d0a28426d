"""Transparent huge pages for the ``jaxalign`` command's host memory (Linux, glibc 2.35+).

XLA's CPU runtime asks ``malloc`` for a program's buffers at every call and frees them when the
call returns. glibc serves a large request on a worker thread with a fresh ``mmap`` (above
64 MiB a thread's arena always maps, whatever ``M_MMAP_MAX`` says) and unmaps it at ``free``, so
every step writes to new memory: a page fault for each 4 KiB page. The CLIP demo's step maps a
391 MiB buffer this way; 150 demo steps took 15.6 million minor page faults and 31-32 s of
kernel time (docs/performance.md, "Page faults on the host").

glibc's tunable ``glibc.malloc.hugetlb=1`` has malloc advise transparent huge pages (2 MiB) for
the memory it maps, where the kernel allows them on advice (``/sys/kernel/mm/transparent_hugepage/
enabled`` at ``madvise`` or ``always``): the whole demo then took 0.72 million page faults
instead of 51.3 million. glibc reads tunables only when a process starts, so the command starts
itself again, once, with the tunable added to ``GLIBC_TUNABLES`` (``restart_with_huge_pages``),
before anything else is imported: the same interpreter, flags and arguments, the same PID.
Results do not change: this is where buffers live, not what is computed. Measured on a 2-core
CPU machine only (where it also made five sequential digits runs slower: docs/benchmarks.md).

Nothing changes off Linux or below glibc 2.35, when ``GLIBC_TUNABLES`` already sets the tunable,
in a process that was already restarted (``RESTARTED`` in its environment), or with
``JAXALIGN_HUGE_PAGES=0``. Library use (``import jaxalign``) is untouched: set
``GLIBC_TUNABLES=glibc.malloc.hugetlb=1`` before starting Python for it.
"""

from __future__ import annotations

import os
import platform
import sys
from collections.abc import Mapping

OPT_OUT = "JAXALIGN_HUGE_PAGES"  # "0": leave the C library's defaults
RESTARTED = "JAXALIGN_RESTARTED_FOR_HUGE_PAGES"  # set in the restarted process: never twice
TUNABLE = "glibc.malloc.hugetlb"


def glibc_with_tunable() -> bool:
    """Whether this is Linux with glibc 2.35 or later (the first with ``TUNABLE``)."""
    name, version = platform.libc_ver()
    if not sys.platform.startswith("linux") or name != "glibc":
        return False
    try:
        return tuple(int(part) for part in version.split(".")[:2]) >= (2, 35)
    except ValueError:
        return False


def environment_with_huge_pages(environ: Mapping[str, str]) -> dict[str, str] | None:
    """``environ`` with ``TUNABLE=1`` added to ``GLIBC_TUNABLES`` (its other tunables kept) and
    ``RESTARTED`` set, or None when nothing should change: ``OPT_OUT`` set to ``0``, already
    restarted, the tunable already set, or not ``glibc_with_tunable()``."""
    tunables = environ.get("GLIBC_TUNABLES", "")
    if environ.get(OPT_OUT) == "0" or RESTARTED in environ or TUNABLE + "=" in tunables:
        return None
    if not glibc_with_tunable():
        return None
    joined = ":".join(filter(None, (tunables, f"{TUNABLE}=1")))
    return {**environ, "GLIBC_TUNABLES": joined, RESTARTED: "1"}


def restart_with_huge_pages() -> None:
    """Replaces this process (same PID) with its own command line (``sys.orig_argv``: the
    interpreter's flags, ``-m jaxalign`` or a script, the arguments) under
    ``environment_with_huge_pages``; returns, doing nothing, when that is None or the process
    cannot be replaced (the run goes on without huge pages)."""
    environ = environment_with_huge_pages(os.environ)
    if environ is None:
        return
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        os.execve(sys.executable, sys.orig_argv, environ)
    except OSError as error:
        print(f"jaxalign: running without huge pages ({error})", file=sys.stderr)
