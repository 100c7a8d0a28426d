"""A ``gs://`` bucket on the local disk, for tests of object-store work directories.

Inside ``fake_bucket(root)``, every ``etils.epath`` operation on ``gs://<bucket>/<key>`` acts on
``root/<bucket>/<key>`` (``etils.epath.testing.mock_epath``), and orbax's TensorStore arrays of a
``gs://`` checkpoint are read and written there (its GCS key-value store swapped for a local
file one; orbax keeps its object-store behaviour otherwise: no directory renames, a
``commit_success.txt`` marking each complete checkpoint). Code that reaches a ``gs://`` path
through ``os`` or ``open`` instead writes a literal ``gs:`` directory under the current one,
which the tests look for.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from unittest import mock

from etils.epath import testing

PREFIX = "gs://"


@contextlib.contextmanager
def fake_bucket(root: str | os.PathLike) -> Iterator[None]:
    root = os.fspath(root)

    def local(path) -> str:
        path = os.fspath(path)
        return os.path.join(root, path[len(PREFIX) :]) if path.startswith(PREFIX) else path

    def one(fn, path, *args, **kwargs):
        return fn(local(path), *args, **kwargs)

    def two(fn, src, dst, *args, **kwargs):
        return fn(local(src), local(dst), *args, **kwargs)

    def glob(fn, pattern):
        found = fn(local(pattern))
        return (
            [PREFIX + os.path.relpath(f, root) for f in found]
            if str(pattern).startswith(PREFIX)
            else found
        )

    def walk(fn, top, **kwargs):
        for directory, dirs, files in fn(local(top), **kwargs):
            if os.fspath(top).startswith(PREFIX):
                directory = PREFIX + os.path.relpath(directory, root)
            yield directory, dirs, files

    def kvstore(path: str) -> dict[str, str]:  # orbax's TensorStore spec for a gs:// path
        return {"driver": "file", "path": local(path)}

    from orbax.checkpoint._src.path import gcs_utils

    names = ("exists", "isdir", "listdir", "makedirs", "mkdir", "open", "remove", "rmtree", "stat")
    with (
        testing.mock_epath(
            **dict.fromkeys(names, one), copy=two, rename=two, replace=two, glob=glob, walk=walk
        ),
        mock.patch.object(gcs_utils, "get_kvstore_for_gcs", kvstore),
        mock.patch.object(gcs_utils, "is_hierarchical_namespace_enabled", lambda path: False),
    ):
        yield
