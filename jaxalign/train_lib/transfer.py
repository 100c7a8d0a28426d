"""Transfer: parameters of a saved run into a new model (``config.init_from``).

``load_from_run`` reads only the parameters (and the model state under the same subtrees, e.g.
batch statistics) of one checkpoint of another run, never its optimizer state, straight into
the new model's shardings on the current mesh. ``init_from.params`` maps subtrees of the saved
parameters onto subtrees of the new ones (``"image_tower->backbone"``); before any array is
read, every mapped pair is checked against the checkpoint's metadata: the same parameter names
below the two subtrees, the same shapes and dtypes. A mismatch raises ``ConfigError`` naming
both sides (``image_tower/fc/kernel (4096, 256) in run ... vs backbone/fc/kernel (1024, 256)
in this model``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
from etils import epath

from jaxalign.schema import ConfigError, InitFromConfig, MissingDataError
from jaxalign.train_lib.checkpoint import Checkpointer
from jaxalign.train_lib.workdir import absolute


def _split(path: str) -> list[str]:
    return [p for p in path.split("/") if p]


def _get(tree: Any, path: str, what: str, key: str) -> Any:
    node = tree
    for depth, name in enumerate(_split(path)):
        if not isinstance(node, Mapping) or name not in node:
            here = "/".join(_split(path)[:depth]) or "the top level"
            names = sorted(node) if isinstance(node, Mapping) else []
            raise ConfigError(
                f"config.init_from.params: {path!r} is not in {what} (the names under {here}: "
                f"{names}); set {key}"
            )
        node = node[name]
    return node


def _leaves(tree: Any, prefix: str = "") -> dict[str, Any]:
    """``{relative path: leaf}`` of nested dicts (the empty path for a single leaf)."""
    if not isinstance(tree, Mapping):
        return {prefix: tree}
    out: dict[str, Any] = {}
    for name, value in tree.items():
        out.update(_leaves(value, f"{prefix}/{name}" if prefix else str(name)))
    return out


def _join(base: str, rest: str) -> str:
    return "/".join(p for p in (base, rest) if p)


def _check_pair(saved: Any, target: Any, src: str, dst: str, run: str) -> None:
    """Same names, shapes and dtypes below ``src`` (saved) and ``dst`` (this model)."""
    saved_leaves, target_leaves = _leaves(saved), _leaves(target)
    problems = []
    for rel in sorted(set(saved_leaves) | set(target_leaves)):
        if rel not in target_leaves:
            problems.append(f"{_join(src, rel)} of run {run!r} has no {_join(dst, rel)} here")
        elif rel not in saved_leaves:
            problems.append(f"{_join(dst, rel)} of this model has no {_join(src, rel)} in {run!r}")
        else:
            a, b = saved_leaves[rel], target_leaves[rel]
            if tuple(a.shape) != tuple(b.shape) or str(a.dtype) != str(b.dtype):
                problems.append(
                    f"{_join(src, rel)} {tuple(a.shape)} {a.dtype} in run {run!r} vs "
                    f"{_join(dst, rel)} {tuple(b.shape)} {b.dtype} in this model"
                )
    if problems:
        shown = "\n  ".join(problems[:10]) + (
            f"\n  ... {len(problems) - 10} more" * (len(problems) > 10)
        )
        raise ConfigError(f"config.init_from.params: {src!r} -> {dst!r} do not match:\n  {shown}")


def _nest(path: str, value: Any) -> Any:
    for name in reversed(_split(path)):
        value = {name: value}
    return value


def _merge(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    out = dict(a)
    for key, value in b.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and key in out else value
    return out


def _replace(tree: Any, path: str, value: Any) -> Any:
    parts = _split(path)
    if not parts:
        return value
    return {**tree, parts[0]: _replace(tree[parts[0]], "/".join(parts[1:]), value)}


def load_from_run(
    init_from: InitFromConfig, params: Any, model_state: dict[str, Any], abstract: Any
) -> tuple[Any, dict[str, Any], str]:
    """``(params, model_state, description)`` with the mapped subtrees read from the run.

    Args:
      init_from: the config's ``init_from`` group (``workdir`` set).
      params, model_state: the new model's initialised values (the parts not mapped stay).
      abstract: the new train state as ``jax.ShapeDtypeStruct``s with shardings (its
        ``params`` and ``model_state`` give the shapes and shardings to read into).

    Raises:
      MissingDataError: the run or its checkpoint is not there.
      ConfigError: a name, shape or dtype that does not match (both sides named).
    """
    run = absolute(init_from.workdir)
    directory = epath.Path(run) / "checkpoints"
    if not directory.is_dir():
        raise MissingDataError(
            f"config.init_from.workdir={init_from.workdir!r}: no checkpoints in '{directory}'"
        )
    checkpointer = Checkpointer(directory, keep=1, read_only=True)
    try:
        try:
            saved, step = checkpointer.state_metadata(init_from.step)
        except FileNotFoundError as error:
            raise MissingDataError(f"config.init_from: {error}") from None
        request: dict[str, Any] = {}
        collections = [c for c in abstract.model_state if c in saved.get("model_state", {})]
        for src, dst in init_from.mapping():
            key = f"config.init_from.params (from {run!r} step {step})"
            src_node = _get(saved["params"], src, f"the parameters of run {run!r}", key)
            dst_node = _get(abstract.params, dst, "this model's parameters", key)
            _check_pair(src_node, dst_node, src, dst, run)
            request = _merge(request, {"params": _nest(src, dst_node)})
            for name in collections:
                try:
                    saved_state = _get(saved["model_state"][name], src, "", key)
                    target_state = _get(abstract.model_state[name], dst, "", key)
                except ConfigError:
                    continue  # the subtree has no state in this collection
                _check_pair(saved_state, target_state, f"{name}/{src}", f"{name}/{dst}", run)
                request = _merge(request, {"model_state": {name: _nest(src, target_state)}})
        part, _ = checkpointer.restore_part(request, step)
    finally:
        checkpointer.close()
    count = 0
    for src, dst in init_from.mapping():
        value = _get(part["params"], src, "", "")
        count += sum(x.size for x in jax.tree.leaves(value))
        params = _replace(params, dst, value)
        for name in part.get("model_state", {}):
            try:
                value = _get(part["model_state"][name], src, "", "")
            except ConfigError:
                continue
            model_state = {**model_state, name: _replace(model_state[name], dst, value)}
    pairs = ", ".join(f"{s or '(all)'} -> {d or '(all)'}" for s, d in init_from.mapping())
    description = f"init_from {run} step {step}: {count:,} parameters ({pairs})"
    return params, model_state, description
