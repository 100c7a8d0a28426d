"""Checkpoint tensors between a PyTorch / safetensors layout and our Flax parameter trees.

A loader lists one ``Tensor`` per checkpoint key (its parameter path in our tree, its expected
shape and how its layout changes); this module checks a directory's safetensors files against
that list before anything is read (every error names the key, the file and both shapes), reads
them (float32; bfloat16 widened), and assembles or splits our ``{"params": ...}`` tree.
Pickle checkpoints are refused. A missing file is a ``MissingDataError``; a malformed one
(JSON, index, truncated or corrupt safetensors) a ``DataError`` whose message starts with its path.
"""

from __future__ import annotations

import contextlib
import dataclasses
import pathlib
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import flax.linen as nn
import jax
import numpy as np
import safetensors

from jaxalign.errors import DataError, MissingDataError, read_json_object

Variables = dict[str, Any]

SAFETENSORS = "model.safetensors"
SAFETENSORS_INDEX = "model.safetensors.index.json"
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")


# --- the mapping: one entry per checkpoint tensor ----------------------------------------------


@dataclasses.dataclass(frozen=True)
class Tensor:
    """A checkpoint tensor ``key`` of shape ``shape`` that becomes our parameter ``path``.

    ``kind``: "copy", "linear" (``[out, in]`` <-> ``[in, out]``), "qkv" (``[h*d, w]`` <->
    ``[w, h, d]``), "qkv_bias" (``[h*d]`` <-> ``[h, d]``), "out" (``[w, h*d]`` <-> ``[h, d, w]``)
    or "conv" (``[out, in, kh, kw]`` <-> ``[kh, kw, in, out]``); ``heads`` for the attention kinds.
    """

    key: str
    path: tuple[str, ...]
    shape: tuple[int, ...]
    kind: str = "copy"
    heads: int = 1


def to_ours(t: Tensor, x: np.ndarray) -> np.ndarray:
    """The checkpoint's layout -> ours (float32, C-contiguous)."""
    x = np.asarray(x, np.float32)
    if t.kind == "linear":
        x = x.T
    elif t.kind == "qkv":
        x = x.T.reshape(x.shape[1], t.heads, -1)
    elif t.kind == "qkv_bias":
        x = x.reshape(t.heads, -1)
    elif t.kind == "out":
        x = x.T.reshape(t.heads, -1, x.shape[0])
    elif t.kind == "conv":
        x = x.transpose(2, 3, 1, 0)
    return np.array(x, order="C")


def to_hf(t: Tensor, x: np.ndarray) -> np.ndarray:
    """Ours -> the checkpoint's layout (float32, C-contiguous, as safetensors needs)."""
    x = np.asarray(x, np.float32)
    if t.kind == "linear":
        x = x.T
    elif t.kind == "qkv":
        x = x.reshape(x.shape[0], -1).T
    elif t.kind in ("qkv_bias", "copy"):
        x = x.reshape(t.shape)
    elif t.kind == "out":
        x = x.reshape(-1, x.shape[-1]).T
    elif t.kind == "conv":
        x = x.transpose(3, 2, 0, 1)
    return np.array(x, order="C")  # (ascontiguousarray would make a scalar 1-D)


@contextlib.contextmanager
def open_safetensors(file: pathlib.Path, framework: str = "np") -> Iterator[Any]:
    """``safetensors.safe_open(file)``, reads inside the block included.

    Raises:
      DataError: ``file`` cannot be read, or is not a safetensors file (truncated or corrupt).
    """
    try:
        with safetensors.safe_open(file, framework=framework) as f:
            yield f
    except safetensors.SafetensorError as error:
        raise DataError(
            f"{file}: not a readable safetensors file (truncated or corrupt: {error})"
        ) from None
    except OSError as error:
        raise DataError(f"{file}: cannot be read ({error.strerror or error})") from None


def weight_files(path: pathlib.Path) -> list[pathlib.Path]:
    """The safetensors files of a checkpoint directory (one, or the shards of an index).

    Raises:
      MissingDataError: no directory, no weights in it, or a shard the index lists is absent.
      DataError: a malformed index, or a directory that holds only pickle checkpoints.
    """
    if not path.is_dir():
        raise MissingDataError(f"checkpoint directory {path} does not exist")
    index = path / SAFETENSORS_INDEX
    if index.is_file():
        weight_map = read_json_object(index).get("weight_map")
        if (
            not weight_map
            or not isinstance(weight_map, dict)
            or not all(isinstance(name, str) for name in weight_map.values())
        ):
            raise DataError(f'{index}: no "weight_map" of tensor names to shard files')
        files = [path / name for name in sorted(set(weight_map.values()))]
        for f in files:
            if not f.is_file():
                raise MissingDataError(f"shard {f} listed in {index} does not exist")
        return files
    if (path / SAFETENSORS).is_file():
        return [path / SAFETENSORS]
    pickles = sorted(p.name for p in path.iterdir() if p.name.endswith(PICKLE_SUFFIXES))
    if pickles:
        raise DataError(
            f"{path} holds only pickle checkpoints ({', '.join(pickles)}): pickle checkpoints are "
            f"not loaded (they can run arbitrary code). Convert them to safetensors, e.g. "
            f"`model.save_pretrained(dir)` with transformers, which writes {SAFETENSORS}"
        )
    raise MissingDataError(f"no {SAFETENSORS} or {SAFETENSORS_INDEX} in {path}")


def read_config(path: pathlib.Path, model_types: Iterable[str]) -> dict[str, Any]:
    """``config.json`` of ``path`` as a dict; its ``model_type`` must be one of ``model_types``.

    Raises:
      MissingDataError: no ``config.json``.
      DataError: naming the file: unreadable, not a JSON object, or another ``model_type``.
    """
    file = path / "config.json"
    if not file.exists():
        raise MissingDataError(f"{file} does not exist (a Hugging Face checkpoint needs it)")
    config = read_json_object(file)
    if config.get("model_type") not in model_types:
        raise DataError(
            f"{file}: model_type {config.get('model_type')!r} is not one of {sorted(model_types)}"
        )
    return config


def tensor_shapes(files: list[pathlib.Path]) -> dict[str, tuple[pathlib.Path, tuple[int, ...]]]:
    """Every tensor key of ``files`` -> (its file, its shape), from the headers alone.

    Raises:
      DataError: a file that is not readable safetensors.
    """
    found: dict[str, tuple[pathlib.Path, tuple[int, ...]]] = {}
    for file in files:
        with open_safetensors(file) as f:
            for key in f.keys():  # noqa: SIM118 (safe_open is not iterable)
                found[key] = (file, tuple(f.get_slice(key).get_shape()))
    return found


def read_tensors(
    path: pathlib.Path,
    files: list[pathlib.Path],
    expected: list[Tensor],
    *,
    ignore: Callable[[str], bool],
) -> dict[str, np.ndarray]:
    """Checks every ``expected`` key exists in ``files`` with its shape, then reads them;
    returns key -> array. Keys for which ``ignore(key)`` is true are skipped; any other key not
    expected is an error.

    Raises:
      DataError: a missing, unknown or misshapen tensor (naming the key, the file and the
        shapes), or a file that is not readable safetensors.
    """
    found = tensor_shapes(files)
    want = {t.key: t for t in expected}
    missing = [k for k in want if k not in found]
    if missing:
        raise DataError(
            f"checkpoint {path} lacks {len(missing)} tensor(s) its config.json implies: "
            f"{', '.join(missing[:8])}{' ...' if len(missing) > 8 else ''}"
        )
    unknown = sorted(k for k in found if k not in want and not ignore(k))
    if unknown:
        raise DataError(
            f"checkpoint {path} has {len(unknown)} tensor(s) this loader does not know: "
            f"{', '.join(unknown[:8])}{' ...' if len(unknown) > 8 else ''} "
            f"(in {found[unknown[0]][0].name})"
        )
    for key, t in want.items():
        file, shape = found[key]
        if shape != t.shape:
            raise DataError(
                f"checkpoint tensor {key} in {file}: expected shape {list(t.shape)} from "
                f"config.json, found {list(shape)}"
            )
    arrays: dict[str, np.ndarray] = {}
    for file in files:
        keys = [k for k, (f, _) in found.items() if f == file and k in want]
        with open_safetensors(file) as f:
            bf16 = {k for k in keys if f.get_slice(k).get_dtype() == "BF16"}
            arrays.update({k: f.get_tensor(k) for k in keys if k not in bf16})
        if bf16:  # numpy has no bfloat16: read those through jax, then widen
            with open_safetensors(file, "flax") as f:
                arrays.update({k: np.asarray(f.get_tensor(k), np.float32) for k in bf16})
    return arrays


def assemble(tensors: list[Tensor], arrays: dict[str, np.ndarray]) -> Variables:
    """``{"params": nested dict}`` of our layouts from the checkpoint's arrays."""
    params: dict[str, Any] = {}
    for t in tensors:
        node = params
        for name in t.path[:-1]:
            node = node.setdefault(name, {})
        node[t.path[-1]] = to_ours(t, arrays[t.key])
    return {"params": params}


def leaf_shapes(tree: Any) -> dict[str, tuple[int, ...]]:
    """``"['params']['cls']"`` -> shape, for every leaf of ``tree``."""
    leaves = jax.tree_util.tree_leaves_with_path(tree)
    return {jax.tree_util.keystr(path): tuple(np.shape(x)) for path, x in leaves}


def check_tree(model: nn.Module, variables: Variables, *inputs: Any) -> None:
    """Raises ValueError unless ``variables`` has exactly the tree and shapes ``model.init``
    makes for ``inputs`` (guards the mapping against changes to the modules)."""
    shapes = jax.eval_shape(lambda: nn.unbox(model.init(jax.random.key(0), *inputs)))
    want, have = leaf_shapes(shapes), leaf_shapes(variables)
    if want != have:
        diff = sorted(k for k in want.keys() | have.keys() if want.get(k) != have.get(k))
        raise ValueError(
            f"mapped parameters do not match {type(model).__name__}'s tree at {diff[:8]}: "
            f"expected {[want.get(k) for k in diff[:8]]}, mapped {[have.get(k) for k in diff[:8]]}"
        )
