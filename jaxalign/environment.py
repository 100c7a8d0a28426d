"""What a run ran on: library versions, devices, processes, the git commit and whether the
checkout had uncommitted changes, glibc's tunables (``env.json``)."""

from __future__ import annotations

import importlib.metadata
import os
import platform
import subprocess
from pathlib import Path
from typing import Any

import jax

PACKAGES = ("jaxalign", "jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "chex", "numpy")


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def _git(where: Path, *args: str) -> str | None:
    """``git -C where args``'s output, or None (no git, not a checkout, an error)."""
    try:
        result = subprocess.run(
            ["git", "-C", str(where), *args],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return result.stdout if result.returncode == 0 else None


def git_commit(path: Path | None = None) -> str | None:
    """The commit of the checkout holding ``path`` (this package by default), or None."""
    out = _git(Path(path or Path(__file__).parent), "rev-parse", "HEAD")
    return out.strip() or None if out else None


def git_dirty(path: Path | None = None) -> bool | None:
    """Whether the checkout holding ``path`` (this package by default) has uncommitted
    changes to tracked files; None when it is not a git checkout."""
    out = _git(Path(path or Path(__file__).parent), "status", "--porcelain", "--untracked-files=no")
    return None if out is None else bool(out.strip())


def describe() -> dict[str, Any]:
    """A JSON-ready description of the software and hardware this process sees."""
    devices = jax.devices()
    return {
        "versions": {p: _version(p) for p in PACKAGES} | {"python": platform.python_version()},
        "backend": jax.default_backend(),
        "device_kind": devices[0].device_kind,
        "device_count": jax.device_count(),
        "local_device_count": jax.local_device_count(),
        "process_count": jax.process_count(),
        "process_index": jax.process_index(),
        "git_commit": git_commit(),
        "git_dirty": git_dirty(),
        "glibc_tunables": os.environ.get("GLIBC_TUNABLES"),  # jaxalign.host_memory
    }
