"""The small files of a run's work directory: JSON written whole (``config.json``, ``env.json``,
``summary.json``, ``eval.json``), JSON lines appended (``config_changes.jsonl``), any text
replaced whole (``write_text``).

Process 0 alone writes them. Every access goes through ``etils.epath``, so the work directory may
be a local path or an object-store URI (``gs://...``): locally a JSON file is written to a
temporary name and renamed over the old one (a reader never sees half a file); an object is
written whole in one request. An object store cannot append: there, appending rewrites the file
(these files hold a few rows).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from typing import Any

import jax
from etils import epath

from jaxalign.train_lib.workdir import is_uri


def path_of(workdir: str | os.PathLike, name: str) -> epath.Path:
    """``workdir/name`` as an ``etils.epath.Path`` (local or URI)."""
    return epath.Path(workdir) / name


def write_json(workdir: str | os.PathLike, name: str, value: Any) -> None:
    """Writes ``value`` as indented JSON to ``workdir/name``, whole (process 0 only)."""
    write_text(workdir, name, json.dumps(value, indent=2) + "\n")


def write_text(workdir: str | os.PathLike, name: str, text: str) -> None:
    """Replaces ``workdir/name`` by ``text``, whole: a reader sees the old file or the new one,
    never a part (process 0 only)."""
    if jax.process_index() != 0:
        return
    target = path_of(workdir, name)
    if is_uri(workdir):
        target.write_text(text)
        return
    tmp = path_of(workdir, f"{name}.tmp")
    tmp.write_text(text)
    tmp.replace(target)


def append_json_lines(workdir: str | os.PathLike, name: str, rows: Iterable[Any]) -> None:
    """Appends one JSON line per row to ``workdir/name`` (process 0 only)."""
    text = "".join(json.dumps(row) + "\n" for row in rows)
    if jax.process_index() != 0 or not text:
        return
    target = path_of(workdir, name)
    if is_uri(workdir):
        target.write_text((target.read_text() if target.exists() else "") + text)
        return
    with target.open("a") as f:
        f.write(text)
