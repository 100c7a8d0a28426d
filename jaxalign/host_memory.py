"""Transparent huge pages for the ``jaxalign`` command's host memory (Linux, glibc).

XLA's CPU runtime asks ``malloc`` for a program's buffers at every call and frees them when the
call returns. glibc serves a large request on a worker thread with a fresh ``mmap`` (above
64 MiB a thread's arena always maps, whatever ``M_MMAP_MAX`` says) and unmaps it at ``free``, so
every step writes to new memory: a page fault for each 4 KiB page. The CLIP demo's step maps a
391 MiB buffer this way; 150 demo steps took 15.6 million minor page faults and 31-33 s of
kernel time (docs/performance.md, "Page faults on the host").

glibc's tunable ``glibc.malloc.hugetlb=1`` has malloc advise transparent huge pages (2 MiB) for
the memory it maps, where the kernel allows them on advice (``/sys/kernel/mm/transparent_hugepage/
enabled`` at ``madvise`` or ``always``); the same buffers then fault about 500 times less often.
glibc reads tunables only when a process starts, so the command starts itself again, once, with
the tunable added to ``GLIBC_TUNABLES`` (``restart_with_huge_pages``), before anything else is
imported. Results do not change: this is where buffers live, not what is computed.

Nothing changes off Linux or glibc, when ``GLIBC_TUNABLES`` already sets the tunable (as the
restarted process's does), or with ``JAXALIGN_HUGE_PAGES=0``. Library use (``import jaxalign``)
is untouched: set ``GLIBC_TUNABLES=glibc.malloc.hugetlb=1`` before starting Python for it.
"""

from __future__ import annotations

import os
import platform
import sys
from collections.abc import Mapping, Sequence

OPT_OUT = "JAXALIGN_HUGE_PAGES"  # "0": leave the C library's defaults
TUNABLE = "glibc.malloc.hugetlb"


def environment_with_huge_pages(environ: Mapping[str, str]) -> dict[str, str] | None:
    """``environ`` with ``TUNABLE=1`` added to ``GLIBC_TUNABLES`` (its other tunables kept), or
    None when nothing should change: not Linux with glibc, ``OPT_OUT`` set to ``0``, or the
    tunable already set."""
    tunables = environ.get("GLIBC_TUNABLES", "")
    if environ.get(OPT_OUT) == "0" or TUNABLE + "=" in tunables:
        return None
    if not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc":
        return None
    return {**environ, "GLIBC_TUNABLES": ":".join(filter(None, (tunables, f"{TUNABLE}=1")))}


def restart_with_huge_pages(command: Sequence[str]) -> None:
    """Replaces this process (same PID) with ``python command`` (``["-m", "jaxalign", ...]``,
    or a script's path and arguments) under ``environment_with_huge_pages``; returns, doing
    nothing, when that is None."""
    environ = environment_with_huge_pages(os.environ)
    if environ is None:
        return
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, [sys.executable, *command], environ)
