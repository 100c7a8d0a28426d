"""Reproducible records for the built-in TFDS datasets: a deterministic example writer and
fixed-level PNG encoding, so two builds of a dataset give byte-identical files."""

from __future__ import annotations

import io
from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np
import PIL.Image
from etils import epath
from tensorflow_datasets.core import writer as writer_lib
from tensorflow_datasets.proto import tf_example_pb2


class DeterministicExampleWriter(writer_lib.ExampleWriter):
    """Re-serialises every record with ``deterministic=True`` before writing it.

    tfds serialises a ``tf.train.Example`` with ``SerializeToString()``; without tensorflow the
    proto runtime is upb, whose map iteration order (the Example's feature map) changes from one
    process to the next, so the same example gives different bytes in two builds. Sorting the map
    keys makes the array_record files byte-identical across builds.
    """

    def write(
        self, path: epath.PathLike, examples: Iterable[tuple[Any, bytes]]
    ) -> Any:  # file_adapters.ExamplePositions | None
        """Writes ``(key, serialized_example)`` pairs to ``path`` in the given order."""

        def deterministic() -> Iterator[tuple[Any, bytes]]:
            for key, serialized in examples:
                example = tf_example_pb2.Example.FromString(serialized)
                yield key, example.SerializeToString(deterministic=True)

        return super().write(path, deterministic())


def encode_png(image: np.ndarray) -> bytes:
    """[H, W, 3] uint8 -> PNG bytes (fixed compression level, so the bytes are reproducible)."""
    buffer = io.BytesIO()
    PIL.Image.fromarray(image).save(buffer, format="PNG", compress_level=6)
    return buffer.getvalue()
