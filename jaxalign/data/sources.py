"""Random-access data sources: ``len(source)`` and ``source[i] -> dict of raw fields``.

Each satisfies grain's ``RandomAccessDataSource`` protocol, so the pipeline can shuffle globally
and resume at any position by index alone. Records are dicts of *raw* fields: images stay encoded
bytes (decoded later, robustly, by :mod:`jaxalign.data.transforms`), captions are ``str`` (or
``bytes`` from TFDS). Every source gives ``"__key__"``; a record a source knows is unusable (a
webdataset sample without an image, a caption file naming a missing image) is *kept* with
``record["__skip__"] = reason`` so that the pipeline counts it instead of silently losing it.

- :func:`tfds_source`: any TFDS dataset prepared on local disk in ``array_record`` format (no
  tensorflow, no download: a missing dataset fails at construction, naming the path or name).
- :class:`WebDatasetSource`: uncompressed webdataset ``.tar`` shards in the open_clip layout
  (``KEY.jpg|jpeg|png|webp`` + ``KEY.txt|json``), indexed once, then read by byte offset.
- :class:`ImageFolderSource`: a folder of images with a ``file,caption`` CSV or a JSONL file.
- :func:`per_class_subset`: ``per_class`` records of each class of a labelled source (few-shot
  training sets), as a :class:`Subset`.

All are picklable (grain sends them to worker processes) and safe to read from several threads.
"""

from __future__ import annotations

import csv
import glob
import json
import os
import pathlib
import re
import tarfile
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from jaxalign.data.transforms import MISSING_CAPTION, MISSING_IMAGE, SKIP_FIELD
from jaxalign.errors import DataError, MissingDataError

IMAGE_EXTENSIONS: tuple[str, ...] = ("jpg", "jpeg", "png", "webp")
CAPTION_EXTENSIONS: tuple[str, ...] = ("txt", "json")
CORRUPT_CAPTION = "corrupt_caption"
_JSON_CAPTION_KEYS = ("caption", "text", "txt")

PathLike = str | os.PathLike


# ---------------------------------------------------------------------------------------------
# TFDS


def _split_names(split: str) -> list[str]:
    """``"train[:10%]+test"`` -> ``["train", "test"]``."""
    return [re.sub(r"\[.*\]$", "", part.strip()) for part in split.split("+")]


def tfds_source(name: str, data_dir: PathLike, split: str, *, decode_images: bool = True) -> Any:
    """A TFDS dataset already prepared under ``data_dir`` as a grain random-access source.

    Args:
      name: ``"name"``, ``"name:1.0.0"`` or ``"name/config:1.0.0"``; the newest version on disk
        is used when none is given. Only files on disk are read (the builder code need not be
        registered, nothing is downloaded or generated).
      data_dir: the TFDS data directory (holding ``name/``), or the prepared version directory
        itself (holding ``dataset_info.json``).
      split: a TFDS split string, slices included (``"train[:90%]"``).
      decode_images: ``False`` returns ``Image`` features as encoded bytes, for the robust
        decoder in :mod:`jaxalign.data.transforms` (a corrupt image is then skipped, not raised).

    Returns:
      TFDS's ``ArrayRecordDataSource``: ``source[i]`` is the feature dict of example ``i``
      (images ``[H, W, C]`` uint8 or bytes, text as bytes, labels as numpy ints).

    Raises:
      MissingDataError (a FileNotFoundError): ``data_dir`` does not exist (named).
      ValueError: no prepared dataset ``name`` under ``data_dir`` (names both and lists what is
        there), or an unknown split.
    """
    import tensorflow_datasets as tfds
    from tensorflow_datasets.core import read_only_builder

    path = pathlib.Path(data_dir).expanduser()
    if not path.is_dir():
        raise MissingDataError(f"tfds_source({name!r}): data_dir {str(path)!r} does not exist")
    if (path / "dataset_info.json").is_file():
        builder = tfds.builder_from_directory(str(path))
        if builder.name != name.split(":")[0].split("/")[0]:
            raise ValueError(
                f"tfds_source: {str(path)!r} holds dataset {builder.name!r}, not {name!r}"
            )
    else:
        try:
            builder = read_only_builder.builder_from_files(name, data_dir=str(path))
        except tfds.core.registered.DatasetNotFoundError:
            present = sorted(p.name for p in path.iterdir() if p.is_dir())
            raise ValueError(
                f"tfds_source: no prepared TFDS dataset {name!r} under data_dir {str(path)!r} "
                f"(datasets there: {present})"
            ) from None
    known = set(builder.info.splits)
    unknown = [s for s in _split_names(split) if s not in known]
    if unknown:
        raise ValueError(
            f"tfds_source({name!r}): unknown split {unknown[0]!r} in {split!r}; "
            f"the splits are {sorted(known)}"
        )
    decoders = None
    if not decode_images:
        decoders = {
            key: tfds.decode.SkipDecoding()
            for key, feature in builder.info.features.items()
            if isinstance(feature, tfds.features.Image)
        }
    return builder.as_data_source(split=split, decoders=decoders)


# ---------------------------------------------------------------------------------------------
# webdataset


def expand_shards(shard_paths: PathLike | Sequence[PathLike]) -> list[str]:
    """Shard list from a sequence of paths or one string with brace ranges
    (``"data/{000000..000009}.tar"``) and/or glob characters, in sorted order for globs."""
    if isinstance(shard_paths, (str, os.PathLike)):
        import braceexpand

        paths: list[str] = []
        for pattern in braceexpand.braceexpand(os.fspath(shard_paths)):
            pattern = os.path.expanduser(pattern)
            matches = sorted(glob.glob(pattern)) if glob.has_magic(pattern) else [pattern]
            paths.extend(matches)
        return paths
    return [os.path.expanduser(os.fspath(p)) for p in shard_paths]


def _base_plus_ext(name: str) -> tuple[str | None, str | None]:
    """webdataset's key split: ``"dir/abc.seg.jpg"`` -> ``("dir/abc", "seg.jpg")``."""
    match = re.match(r"^((?:.*/|)[^.]+)[.]([^/]*)$", name)
    return (match.group(1), match.group(2)) if match else (None, None)


_INDEX_DTYPE = np.dtype(
    [
        ("shard", np.int32),
        ("image_offset", np.int64),
        ("image_size", np.int64),  # -1: no image member
        ("caption_offset", np.int64),
        ("caption_size", np.int64),  # -1: no caption member
        ("caption_json", np.bool_),
    ]
)


def _index_shard(path: str, shard: int) -> tuple[list[tuple], list[str]]:
    """Reads the tar headers once: one index row and key per sample (consecutive members sharing
    a key, as webdataset groups them)."""
    rows: list[tuple] = []
    keys: list[str] = []
    current: str | None = None
    members: dict[str, tuple[int, int]] = {}

    def flush():
        if current is None:
            return
        image = next((members[e] for e in IMAGE_EXTENSIONS if e in members), (0, -1))
        caption_ext = next((e for e in CAPTION_EXTENSIONS if e in members), None)
        caption = members[caption_ext] if caption_ext else (0, -1)
        rows.append((shard, image[0], image[1], caption[0], caption[1], caption_ext == "json"))
        keys.append(current)

    try:
        with tarfile.open(path, mode="r:") as tar:
            for info in tar:
                if not info.isfile():
                    continue
                key, ext = _base_plus_ext(info.name)
                if key is None:
                    continue
                if key != current:
                    flush()
                    current, members = key, {}
                members[ext.lower()] = (info.offset_data, info.size)
            flush()
    except tarfile.ReadError as error:
        raise DataError(
            f"WebDatasetSource: cannot index {path!r} as an uncompressed tar ({error}); "
            "compressed shards cannot be read by offset"
        ) from None
    return rows, keys


def _parse_caption(data: bytes | None, is_json: bool) -> tuple[str | None, str]:
    """Caption member bytes -> ``(caption, problem)``; ``problem`` is "" or a skip reason."""
    if data is None:
        return None, MISSING_CAPTION
    text = data.decode("utf-8", errors="replace")
    if not is_json:
        return text, ""
    try:
        meta = json.loads(text)
    except ValueError:
        return None, CORRUPT_CAPTION
    if isinstance(meta, dict):
        for key in _JSON_CAPTION_KEYS:
            if meta.get(key) is not None:
                return str(meta[key]), ""
    return None, MISSING_CAPTION


class WebDatasetSource:
    """Random access into webdataset tar shards (open_clip layout).

    The shards are indexed once at construction (tar headers only: member name -> data offset
    and size); ``source[i]`` then reads the image and caption bytes of sample ``i`` at their
    offsets, so any position can be resumed exactly. Sample ``i`` counts through the shards in
    order, each shard's samples in tar order.

    ``source[i]`` is ``{"image": bytes | None, "caption": str | None, "__key__": str,
    "__url__": shard path}``; a caption comes from ``KEY.txt`` (UTF-8) or ``KEY.json``'s
    ``caption`` / ``text`` field. Samples without an image member (or, when ``require_caption``,
    without a caption member or with unreadable JSON) are kept, flagged with ``"__skip__"``
    (``missing_image``, ``missing_caption``, ``corrupt_caption``), for the pipeline to count.

    Raises MissingDataError naming a missing shard, ValueError for no shards, DataError for a
    shard that is not an uncompressed tar.
    """

    def __init__(self, shard_paths: PathLike | Sequence[PathLike], *, require_caption: bool = True):
        self.shard_paths = expand_shards(shard_paths)
        if not self.shard_paths:
            raise ValueError(f"WebDatasetSource: no shards in {shard_paths!r}")
        for path in self.shard_paths:
            if not os.path.isfile(path):
                raise MissingDataError(f"WebDatasetSource: shard {path!r} does not exist")
        self.require_caption = require_caption
        rows: list[tuple] = []
        self._keys: list[str] = []
        for shard, path in enumerate(self.shard_paths):
            shard_rows, shard_keys = _index_shard(path, shard)
            rows.extend(shard_rows)
            self._keys.extend(shard_keys)
        self._index = np.array(rows, dtype=_INDEX_DTYPE)

    def __len__(self) -> int:
        return len(self._index)

    def __repr__(self) -> str:
        first = self.shard_paths[0]
        more = f" and {len(self.shard_paths) - 1} more shards" if len(self.shard_paths) > 1 else ""
        return f"WebDatasetSource({first!r}{more}, {len(self)} samples)"

    def _read(self, row: np.void) -> tuple[bytes | None, bytes | None]:
        path = self.shard_paths[int(row["shard"])]
        with open(path, "rb", buffering=0) as f:
            fd = f.fileno()
            image = caption = None
            if row["image_size"] >= 0:
                image = os.pread(fd, int(row["image_size"]), int(row["image_offset"]))
            if row["caption_size"] >= 0:
                caption = os.pread(fd, int(row["caption_size"]), int(row["caption_offset"]))
        return image, caption

    def __getitem__(self, index: int) -> dict[str, Any]:
        index = int(index)
        if not -len(self) <= index < len(self):
            raise IndexError(f"WebDatasetSource: index {index} out of range for {len(self)}")
        row = self._index[index]
        image_bytes, caption_bytes = self._read(row)
        caption, problem = _parse_caption(caption_bytes, bool(row["caption_json"]))
        record: dict[str, Any] = {
            "image": image_bytes,
            "caption": caption,
            "__key__": self._keys[index],
            "__url__": self.shard_paths[int(row["shard"])],
        }
        if image_bytes is None:
            record[SKIP_FIELD] = MISSING_IMAGE
        elif problem and self.require_caption:
            record[SKIP_FIELD] = problem
        return record


# ---------------------------------------------------------------------------------------------
# Image folder


def _read_captions(path: pathlib.Path) -> list[tuple[str, Any]]:
    """``(file, caption)`` pairs from a ``file,caption`` CSV or a JSONL file."""
    pairs: list[tuple[str, Any]] = []
    if path.suffix.lower() in (".jsonl", ".json"):
        with open(path, encoding="utf-8") as f:
            for line_no, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except ValueError as error:
                    raise DataError(f"{path}:{line_no}: not JSON ({error})") from None
                if not isinstance(row, dict) or "file" not in row:
                    raise DataError(f'{path}:{line_no}: expected {{"file": ..., "caption": ...}}')
                pairs.append((str(row["file"]), row.get("caption")))
        return pairs
    with open(path, encoding="utf-8", newline="") as f:
        reader = csv.DictReader(f)
        columns = reader.fieldnames or []
        if "file" not in columns or "caption" not in columns:
            raise DataError(f"{path}: needs columns 'file' and 'caption', has {columns}")
        for row in reader:
            pairs.append((row["file"], row["caption"]))
    return pairs


class ImageFolderSource:
    """Images under ``root`` with captions from a CSV (columns ``file,caption``) or a JSONL file
    (``{"file": ..., "caption": ...}`` per line); ``file`` is relative to ``root``.

    ``source[i]`` is ``{"image": bytes | None, "caption": str | None, "__key__": file}``, the
    image read from disk at access time. A listed file that is missing is kept, flagged
    ``"__skip__": "missing_image"``. ``captions_file`` defaults to ``root/captions.csv`` or
    ``root/captions.jsonl``.

    Raises MissingDataError naming ``root`` or the captions file when absent, DataError for a
    captions file without the needed columns.
    """

    def __init__(self, root: PathLike, captions_file: PathLike | None = None):
        self.root = pathlib.Path(root).expanduser()
        if not self.root.is_dir():
            raise MissingDataError(f"ImageFolderSource: root {str(self.root)!r} does not exist")
        if captions_file is None:
            candidates = [self.root / "captions.csv", self.root / "captions.jsonl"]
            found = [c for c in candidates if c.is_file()]
            if not found:
                raise MissingDataError(
                    f"ImageFolderSource: no captions file given and none of "
                    f"{[str(c) for c in candidates]} exists"
                )
            captions_path = found[0]
        else:
            captions_path = pathlib.Path(captions_file).expanduser()
            if not captions_path.is_file():
                raise MissingDataError(
                    f"ImageFolderSource: captions file {str(captions_path)!r} does not exist"
                )
        self.captions_file = captions_path
        pairs = _read_captions(captions_path)
        self._files = [file for file, _ in pairs]
        self._captions = [caption for _, caption in pairs]

    def __len__(self) -> int:
        return len(self._files)

    def __repr__(self) -> str:
        return f"ImageFolderSource({str(self.root)!r}, {len(self)} images)"

    def __getitem__(self, index: int) -> dict[str, Any]:
        index = int(index)
        file = self._files[index]
        record: dict[str, Any] = {"image": None, "caption": self._captions[index], "__key__": file}
        try:
            record["image"] = (self.root / file).read_bytes()
        except OSError:
            record[SKIP_FIELD] = MISSING_IMAGE
        return record


# ---------------------------------------------------------------------------------------------
# Subsets


class Subset:
    """The records ``source[indices[0]], source[indices[1]], ...`` of a random-access source.

    ``indices`` (int64, increasing) are the chosen source indices; ``subset[i]`` is
    ``source[indices[i]]``. Picklable when ``source`` is.
    """

    def __init__(self, source: Any, indices: Sequence[int] | np.ndarray):
        self.source = source
        self.indices = np.asarray(indices, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index: int) -> Any:
        return self.source[int(self.indices[int(index)])]

    def __repr__(self) -> str:
        return f"Subset({self.source!r}, {len(self)} of {len(self.source)} records)"


def _label_of(record: Any, index: int, label_key: str) -> int:
    """``record[label_key]`` (an int or a 0-d integer array) as an int >= 0."""
    if not isinstance(record, Mapping) or label_key not in record:
        keys = sorted(record) if isinstance(record, Mapping) else type(record).__name__
        raise ValueError(
            f"per_class_subset: record {index} has no label key {label_key!r} (it has {keys})"
        )
    label = np.asarray(record[label_key])
    if label.ndim != 0 or not np.issubdtype(label.dtype, np.integer) or int(label) < 0:
        raise ValueError(
            f"per_class_subset: record {index}'s {label_key!r} is {record[label_key]!r}; "
            "expected an int >= 0 or a 0-d integer array"
        )
    return int(label)


def per_class_subset(source: Any, *, per_class: int, seed: int, label_key: str = "label") -> Subset:
    """``per_class`` records of each class present in ``source`` (few-shot training sets).

    For each class ``c``, ``per_class`` of its records are drawn without replacement by
    ``np.random.default_rng([seed, c])``, so the choice depends only on ``(seed, c)`` and on
    that class's records, never on the other classes or on the process. Every record's
    ``label_key`` is read once (pass ``tfds_source(..., decode_images=False)`` to skip image
    decoding).

    Args:
      source: ``len(source)`` and ``source[i] -> dict`` with an int (or 0-d array) label.
      per_class: records kept per class, >= 1.
      seed: chooses the records, >= 0.
      label_key: the record field holding the class.

    Returns:
      A :class:`Subset` of ``per_class * num_classes`` records, in increasing source order.

    Raises:
      ValueError: ``per_class < 1``, an empty source, a record without ``label_key`` (naming
        the index and key), or a class with fewer than ``per_class`` records (naming it).
    """
    if per_class < 1:
        raise ValueError(f"per_class_subset: per_class={per_class} must be >= 1")
    if seed < 0:
        raise ValueError(f"per_class_subset: seed={seed} must be >= 0")
    num_records = len(source)
    if num_records == 0:
        raise ValueError(f"per_class_subset: source {source!r} is empty")
    labels = np.array([_label_of(source[i], i, label_key) for i in range(num_records)])
    chosen = []
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        if len(members) < per_class:
            raise ValueError(
                f"per_class_subset: class {int(label)} has {len(members)} records, fewer than "
                f"per_class={per_class}"
            )
        rng = np.random.default_rng([seed, int(label)])
        chosen.append(members[rng.choice(len(members), size=per_class, replace=False)])
    return Subset(source, np.sort(np.concatenate(chosen)))
