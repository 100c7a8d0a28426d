"""Running a per-shard function over a batch split across the mesh, with global statistics.

Every objective in ``jaxalign.objectives`` is written once, as a function of one device's rows
that reaches the rest of the global batch only through a ``BatchAxes``: ``gather`` (the other
devices' rows), ``sum`` (a global sum) and ``offset`` (where this device's rows start in the
global batch). ``map_over_batch`` runs such a function either directly (no mesh: one device, the
``BatchAxes`` collectives are identities) or under ``jax.shard_map`` over the mesh's batch axes.
The two paths share every line of arithmetic, which is what makes the result independent of the
number of devices and hosts.

Gradients are taken outside, by the caller: ``all_gather``'s transpose sends each row's gradient
back to the device that owns it, and a replicated input's gradient is summed over devices by
``shard_map`` itself (see the pitfalls in docs/architecture.md).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Hashable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax
from jax.sharding import Mesh, PartitionSpec

from jaxalign.parallel.mesh import batch_axes, batch_shard_count, describe_mesh


@dataclasses.dataclass(frozen=True)
class BatchAxes:
    """The mesh axes the batch is split over, seen from inside one shard.

    ``names == ()`` means the whole batch is on this device, and every method is an identity.
    """

    names: tuple[str, ...] = ()

    def gather(self, x: jax.Array) -> jax.Array:
        """``[local, ...] -> [global, ...]``: every device's rows, in global order."""
        if not self.names:
            return x
        return lax.all_gather(x, self.names, axis=0, tiled=True)

    def sum(self, x: Any) -> Any:
        """Sum of a pytree over the devices of the batch axes (the global sum)."""
        if not self.names:
            return x
        return lax.psum(x, self.names)

    @property
    def size(self) -> int:
        """How many devices share the batch (1 without a mesh); static inside shard_map."""
        return lax.axis_size(self.names) if self.names else 1

    def vary(self, x: jax.Array) -> jax.Array:
        """Marks a replicated value as per-device, so that a hand-written backward pass may
        return this device's share of its gradient (``shard_map`` sums the shares)."""
        if not self.names:
            return x
        return lax.pcast(x, self.names, to="varying")

    def offset(self, local_size: int) -> jax.Array:
        """Global index of this device's first row (0 without a mesh)."""
        if not self.names:
            return jnp.zeros((), jnp.int32)
        return lax.axis_index(self.names) * local_size


def map_over_batch(
    fn: Callable[..., Any],
    *,
    mesh: Mesh | None,
    batched: Sequence[tuple[str, jax.Array]],
    replicated: Sequence[jax.Array] = (),
    options: Mapping[str, Hashable] | None = None,
    caller: str,
) -> Any:
    """Runs ``fn(axes, *batched, *replicated, **options)`` with the batch split over the mesh.

    Args:
      fn: a per-shard function ``fn(axes: BatchAxes, *arrays, **options) -> pytree of
        scalars``, defined at module level. Its outputs must be global (the same on every
        device), e.g. built with ``axes.sum``.
      mesh: the mesh, or None for one device.
      batched: ``(name, [batch, ...] array)`` pairs, split along axis 0 over the batch axes.
        The names are used in error messages only.
      replicated: arrays every device sees whole (scales, temperatures, biases).
      options: static keyword arguments of ``fn`` (hashable: floats, strings, tuples).
      caller: the public function's name, for error messages.

    The call is jitted and cached on ``(fn, options, mesh)`` and the shapes, so an eager call
    compiles once instead of dispatching every collective one by one; under an outer
    ``jax.jit`` it is inlined.

    Raises:
      ValueError: a batch size the batch axes do not divide, naming the argument and the mesh.
    """
    if mesh is not None and not batch_axes(mesh):
        raise ValueError(
            f"{caller}: {describe_mesh(mesh)} has none of the batch axes ('data', 'fsdp'); "
            "build the mesh with jaxalign.parallel.make_mesh"
        )
    shards = batch_shard_count(mesh)
    for name, array in batched:
        if array.shape[0] % shards:
            raise ValueError(
                f"{caller}: {name} has global batch {array.shape[0]} (shape "
                f"{tuple(array.shape)}), which the batch axes {batch_axes(mesh)} of "
                f"{describe_mesh(mesh)} ({shards} shards) do not divide"
            )
    return _run(
        tuple(array for _, array in batched),
        tuple(replicated),
        fn=fn,
        options=tuple(sorted((options or {}).items())),
        mesh=mesh,
    )


@functools.partial(jax.jit, static_argnames=("fn", "options", "mesh"))
def _run(
    batched: tuple[jax.Array, ...],
    replicated: tuple[jax.Array, ...],
    *,
    fn: Callable[..., Any],
    options: tuple[tuple[str, Hashable], ...],
    mesh: Mesh | None,
) -> Any:
    if mesh is None:
        return fn(BatchAxes(), *batched, *replicated, **dict(options))
    axes = batch_axes(mesh)
    sharded = jax.shard_map(
        functools.partial(fn, BatchAxes(axes), **dict(options)),
        mesh=mesh,
        in_specs=(PartitionSpec(axes),) * len(batched) + (PartitionSpec(),) * len(replicated),
        out_specs=PartitionSpec(),
    )
    return sharded(*batched, *replicated)
