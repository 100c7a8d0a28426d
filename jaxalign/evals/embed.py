"""Run a jitted embedding function over a finite stream of host batches, sharded over the mesh.

``embed_dataset`` pads every batch to ``global_batch_size`` (the last one is usually smaller),
so each call has the same shapes and the function compiles once; the padded rows repeat the
batch's last real row (so they are valid inputs: no all-zero text masks) and are dropped again
on the host. Batches are placed with the batch over the mesh's (``data``, ``fsdp``) axes and run
under :func:`jaxalign.parallel.sharding.activation_context`, so the models' logical constraints
apply. One step is kept in flight: batch ``i + 1`` is dispatched before the outputs of batch
``i`` are copied back.

Multi-process: each process passes its own share of each global batch (``global_batch_size /
process_count`` rows at most, as ``make_pipeline`` yields them); the arrays are assembled with
:func:`jaxalign.data.pipeline.to_global_array`, and outputs, validity mask and pass-through
fields are gathered to every process. Processes agree at each step whether any of them still has
a batch, so finite shards of unequal length do not deadlock.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh
from tqdm import tqdm

from jaxalign.parallel.mesh import batch_shard_count, batch_sharding, describe_mesh
from jaxalign.parallel.sharding import activation_context

Batch = Mapping[str, Any]
VALID = "__valid__"  # the validity mask's field in the multi-process device batch


def _pad_rows(x: np.ndarray, size: int) -> np.ndarray:
    """``[n, ...]`` -> ``[size, ...]`` by repeating the last row (zeros when ``n == 0``)."""
    n = x.shape[0]
    if n == size:
        return x
    if n == 0:
        return np.zeros((size, *x.shape[1:]), x.dtype)
    return np.concatenate([x, np.repeat(x[-1:], size - n, axis=0)])


def _put(local: Mapping[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
    """Host arrays ``[b, ...]`` -> ``jax.Array``s with the batch over the mesh's batch axes.

    One process: ``jax.device_put`` with ``batch_sharding(mesh)``. Several: each process holds
    its share and :func:`jaxalign.data.pipeline.to_global_array` assembles the global arrays.
    """
    if jax.process_count() == 1:
        return jax.device_put(dict(local), batch_sharding(mesh))
    from jaxalign.data.pipeline import to_global_array

    return to_global_array(local, mesh)


def _to_host(tree: Any) -> Any:
    """Global ``jax.Array``s -> full numpy arrays on this host (gathered across processes)."""
    if jax.process_count() == 1:
        return jax.device_get(tree)
    from jax.experimental import multihost_utils

    return multihost_utils.process_allgather(tree, tiled=True)


def _aligned_batches(batches: Iterable[Batch]) -> Iterator[Batch | None]:
    """This process's batches, then ``None`` while other processes still have some (one
    process: just the batches)."""
    iterator = iter(batches)
    if jax.process_count() == 1:
        yield from iterator
        return
    from jax.experimental import multihost_utils

    while True:
        batch = next(iterator, None)
        more = multihost_utils.process_allgather(np.int32(batch is not None))
        if not np.any(more):
            return
        yield batch


def _check_outputs(out: Any, size: int) -> None:
    if not isinstance(out, Mapping):
        raise TypeError(f"embed_fn must return a dict of [batch, ...] arrays, got {type(out)}")
    for key, value in out.items():
        if value.ndim == 0 or value.shape[0] != size:
            raise ValueError(
                f"embed_fn output {key!r} has shape {value.shape}; every output needs the "
                f"leading batch axis of size {size}"
            )


def embed_dataset(
    embed_fn: Callable[..., Mapping[str, jax.Array]],
    batches: Iterable[Batch],
    mesh: Mesh,
    *,
    global_batch_size: int,
    keep: Sequence[str] = (),
    inputs: Sequence[str] | None = None,
    params: Any = None,
    progress: bool | None = None,
    desc: str = "embed",
) -> dict[str, np.ndarray]:
    """Applies ``embed_fn`` to every batch; returns the outputs and ``keep`` fields on the host.

    Args:
      embed_fn: ``{field: [global_batch_size, ...]} -> {name: [global_batch_size, ...]}``, a
        row-wise function (padded rows must not change the real ones). It is wrapped in
        ``jax.jit`` unless it already is one; pass a jitted function to reuse its compilation
        across calls. Its inputs have the batch over (``data``, ``fsdp``).
      batches: finite iterable of host batches, dicts of ``[b, ...]`` numpy arrays with
        ``b <= global_batch_size / process_count`` (e.g. a ``make_pipeline(...,
        num_epochs=1, drop_remainder=False)``). Each batch must have the same fields, trailing
        shapes and dtypes, or the function recompiles.
      mesh: the device mesh; ``global_batch_size`` must be a multiple of its batch shard count.
      global_batch_size: rows per call, over all processes.
      keep: fields passed through to the result unchanged (e.g. ``"label"``), concatenated over
        batches; with one process any dtype (e.g. captions as bytes), with several numeric.
      inputs: fields given to ``embed_fn``; default every field not in ``keep``.
      params: when given, ``embed_fn(params, batch)`` is called with ``params`` (e.g. model
        parameters, already placed on the mesh) as a traced argument, so evaluating new
        parameters at every eval of a training run reuses the compilation (parameters closed
        over by ``embed_fn`` would be baked in as constants, and a new closure recompiles).
      progress: show a tqdm bar (on process 0); default when stderr is a terminal.
      desc: the progress bar's label.

    Returns:
      ``{name: [n, ...]}`` for each output of ``embed_fn`` and each ``keep`` field, where ``n``
      is the number of real rows over all batches (and processes), in batch order.

    Raises:
      ValueError: a bad ``global_batch_size``, a batch that is too large, an empty stream, or a
        ``keep`` field that is also an output name.
    """
    shards, processes = batch_shard_count(mesh), jax.process_count()
    if global_batch_size < 1 or global_batch_size % shards or global_batch_size % processes:
        raise ValueError(
            f"global_batch_size={global_batch_size} must be a positive multiple of the "
            f"{shards} batch shards of {describe_mesh(mesh)} and of the {processes} processes"
        )
    local_size = global_batch_size // processes
    keep = tuple(keep)
    jitted = embed_fn if hasattr(embed_fn, "lower") else jax.jit(embed_fn)
    if progress is None:
        progress = sys.stderr.isatty()
    try:
        total = len(batches)  # type: ignore[arg-type]
    except TypeError:
        total = None
    bar = tqdm(
        total=total, desc=desc, unit="batch", disable=not progress or jax.process_index() > 0
    )

    collected: dict[str, list[np.ndarray]] = {}
    template: dict[str, np.ndarray] | None = None

    def collect(pending: tuple[Any, Any, dict[str, np.ndarray]]) -> None:
        out, valid, host = _to_host(pending[0]), np.asarray(_to_host(pending[1])), pending[2]
        for key, value in {**out, **host}.items():
            collected.setdefault(key, []).append(np.asarray(value)[valid])

    pending = None
    with activation_context(mesh):
        for batch in _aligned_batches(batches):
            if batch is None:  # multi-process: this process is done, others are not
                if template is None:
                    raise ValueError(
                        f"process {jax.process_index()} has no batches while others do; "
                        "give every process at least one batch"
                    )
                batch = {k: v[:0] for k, v in template.items()}
            batch = {k: np.asarray(v) for k, v in batch.items()}
            if template is None:
                template = batch
            names = [k for k in batch if k not in keep] if inputs is None else list(inputs)
            rows = {batch[k].shape[0] for k in (*names, *keep)}
            if len(rows) != 1 or next(iter(rows)) > local_size:
                raise ValueError(
                    f"batch fields have {sorted(rows)} rows; each batch needs one row count of "
                    f"at most {local_size} (global_batch_size / processes)"
                )
            count = rows.pop()
            device_batch = _put({k: _pad_rows(batch[k], local_size) for k in names}, mesh)
            out = jitted(device_batch) if params is None else jitted(params, device_batch)
            _check_outputs(out, global_batch_size)
            if overlap := set(out) & set(keep):
                raise ValueError(f"keep fields {sorted(overlap)} are also outputs of embed_fn")
            valid_local = np.arange(local_size) < count
            if processes == 1:
                valid, host = valid_local, {k: _pad_rows(batch[k], local_size) for k in keep}
            else:  # gathered like the outputs, so rows line up across processes
                extra = {k: _pad_rows(batch[k], local_size) for k in keep}
                placed = _put({VALID: valid_local, **extra}, mesh)
                valid = placed.pop(VALID)
                host = _to_host(placed)
            if pending is not None:
                collect(pending)
            pending = (out, valid, host)
            bar.update(1)
        if pending is not None:
            collect(pending)
    bar.close()
    if template is None:
        raise ValueError("embed_dataset: the stream of batches is empty")
    return {key: np.concatenate(parts) for key, parts in collected.items()}
