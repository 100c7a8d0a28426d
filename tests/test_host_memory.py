"""The ``jaxalign`` command restarts itself once with glibc's huge-pages tunable for malloc
(``jaxalign.host_memory``): added to the tunables already set, never twice, not with
``JAXALIGN_HUGE_PAGES=0``; the restarted process keeps its interpreter flags and arguments, its
large allocations get huge pages (where the kernel gives them on advice), and ``env.json``'s
description records the tunable."""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

import pytest

from jaxalign import host_memory

ON = "glibc.malloc.hugetlb=1"  # written out: a misspelt tunable is ignored by glibc, silently
RESTARTED = {host_memory.RESTARTED: "1"}
glibc_only = pytest.mark.skipif(not host_memory.glibc_with_tunable(), reason="glibc >= 2.35")


@glibc_only
def test_the_tunable_is_added_once_to_those_already_set():
    added = host_memory.environment_with_huge_pages
    assert added({"A": "1"}) == {"A": "1", "GLIBC_TUNABLES": ON, **RESTARTED}
    kept = added({"GLIBC_TUNABLES": "glibc.malloc.arena_max=2"})
    assert kept == {"GLIBC_TUNABLES": f"glibc.malloc.arena_max=2:{ON}", **RESTARTED}
    assert added({"GLIBC_TUNABLES": ON}) is None
    assert added({"GLIBC_TUNABLES": "glibc.malloc.hugetlb=0"}) is None  # the user's choice
    assert added(RESTARTED) is None  # never a second restart, whatever glibc kept
    assert added({host_memory.OPT_OUT: "0"}) is None


def _child(args: list[str], **env: str) -> subprocess.CompletedProcess:
    """``python args`` with neither the tunable nor the restart marker in its environment (the
    tests' own processes have both: ``tests/conftest.py``), plus ``env``."""
    drop = ("GLIBC_TUNABLES", host_memory.RESTARTED)
    environ = {k: v for k, v in os.environ.items() if k not in drop}
    result = subprocess.run(
        [sys.executable, *args], capture_output=True, text=True, check=False, timeout=300,
        env={**environ, **env},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    return result


# Restarts (as ``cli.run`` does), then maps 64 MiB with malloc, writes it, and reports the huge
# pages that added to the process, its tunables, arguments and ``-O`` flag.
RESTART_AND_ALLOCATE = """
import ctypes, json, os, sys
from jaxalign import host_memory

host_memory.restart_with_huge_pages()

def huge_kib():
    for line in open("/proc/self/smaps_rollup"):
        if line.startswith("AnonHugePages:"):
            return int(line.split()[1])

libc = ctypes.CDLL(None)
libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, (ctypes.c_size_t,)
before = huge_kib()
block = libc.malloc(64 << 20)
ctypes.memset(block, 1, 64 << 20)
tunables = os.environ.get("GLIBC_TUNABLES")
print(json.dumps({"huge_kib": huge_kib() - before, "argv": sys.argv[1:], "tunables": tunables,
                  "optimize": sys.flags.optimize}))
"""


def _thp_mode() -> str:
    """The kernel's transparent huge page mode (the bracketed word), or "" if unknown."""
    path = pathlib.Path("/sys/kernel/mm/transparent_hugepage/enabled")
    text = path.read_text() if path.exists() else ""
    return text.split("[", 1)[1].split("]", 1)[0] if "[" in text else ""


@glibc_only
def test_the_restart_keeps_the_command_and_gives_large_blocks_huge_pages():
    args = ["-O", "-c", RESTART_AND_ALLOCATE, "one", "two words"]
    restarted = json.loads(_child(args).stdout)
    assert restarted["tunables"] == ON
    assert restarted["argv"] == ["one", "two words"] and restarted["optimize"] == 1
    kept = json.loads(_child(args, **{host_memory.OPT_OUT: "0"}).stdout)
    assert kept["tunables"] is None
    mode = _thp_mode()
    if mode in ("madvise", "always"):
        assert restarted["huge_kib"] >= 32 * 1024, restarted  # most of the 64 MiB
    if mode == "madvise":
        assert kept["huge_kib"] == 0, kept  # without the advice, none


@glibc_only
def test_the_command_restarts_itself_and_records_the_tunable():
    described = json.loads(_child(["-m", "jaxalign", "env"]).stdout)
    assert described["glibc_tunables"] == ON
