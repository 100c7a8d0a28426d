"""The ``jaxalign`` command restarts itself once with glibc's huge-pages tunable for malloc
(``jaxalign.host_memory``): added to the tunables already set, never twice, not with
``JAXALIGN_HUGE_PAGES=0``; the restarted process records it in ``env.json``'s description."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys

import pytest

from jaxalign import host_memory

GLIBC = sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc"
ON = f"{host_memory.TUNABLE}=1"


@pytest.mark.skipif(not GLIBC, reason="a glibc tunable")
def test_the_tunable_is_added_once_to_those_already_set():
    assert host_memory.environment_with_huge_pages({"A": "1"}) == {"A": "1", "GLIBC_TUNABLES": ON}
    kept = host_memory.environment_with_huge_pages({"GLIBC_TUNABLES": "glibc.malloc.arena_max=2"})
    assert kept == {"GLIBC_TUNABLES": f"glibc.malloc.arena_max=2:{ON}"}
    assert host_memory.environment_with_huge_pages({"GLIBC_TUNABLES": ON}) is None
    assert (
        host_memory.environment_with_huge_pages({"GLIBC_TUNABLES": f"{host_memory.TUNABLE}=0"})
        is None
    )
    assert host_memory.environment_with_huge_pages({host_memory.OPT_OUT: "0"}) is None


def _described(**env: str) -> dict:
    """``python -m jaxalign env`` (through ``cli.run``) in a child whose environment has no
    ``GLIBC_TUNABLES``, plus ``env``: its description of itself."""
    environ = {k: v for k, v in os.environ.items() if k != "GLIBC_TUNABLES"}
    result = subprocess.run(
        [sys.executable, "-m", "jaxalign", "env"],
        capture_output=True, text=True, check=False, timeout=300, env={**environ, **env},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout)


@pytest.mark.skipif(not GLIBC, reason="a glibc tunable")
def test_the_command_restarts_itself_with_huge_pages():
    assert _described()["glibc_tunables"] == ON
    assert _described(**{host_memory.OPT_OUT: "0"})["glibc_tunables"] is None
