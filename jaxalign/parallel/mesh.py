"""The device mesh: built from a config, with the axes that shard the batch named once.

jaxalign uses one mesh with three axes, always in this order:

- ``data``: pure data parallelism (parameters replicated);
- ``fsdp``: data parallelism with parameters and optimizer state sharded (ZeRO-3 style);
- ``tensor``: tensor (model) parallelism inside a layer.

Both ``data`` and ``fsdp`` split the batch, so a global batch of ``B`` examples lives as
``B / (data * fsdp)`` rows per device, replicated over ``tensor``. Axes are ``Auto`` (see the
pitfalls in docs/architecture.md: ``jax.make_mesh``'s default ``Explicit`` axes break
``shard_map`` inputs and flax's logical constraints).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import jax
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

MESH_AXES: tuple[str, ...] = ("data", "fsdp", "tensor")
BATCH_AXES: tuple[str, ...] = ("data", "fsdp")


def resolve_mesh_shape(sizes: Mapping[str, int], num_devices: int) -> dict[str, int]:
    """Turns ``{axis: size}`` with at most one ``-1`` ("the rest") into concrete sizes.

    Axes left out of ``sizes`` get size 1. The product of the result equals ``num_devices``.
    Raises ValueError naming the key and value for an unknown axis, a size that is not a
    positive integer or -1, two -1s, or sizes that do not multiply to the device count.
    """
    unknown = sorted(set(sizes) - set(MESH_AXES))
    if unknown:
        raise ValueError(
            f"mesh: unknown axis {unknown[0]!r} (in {dict(sizes)}); the axes are {MESH_AXES}"
        )
    shape = {axis: 1 for axis in MESH_AXES}
    rest_axes = []
    for axis, size in sizes.items():
        if isinstance(size, bool) or not isinstance(size, int) or (size < 1 and size != -1):
            raise ValueError(
                f"mesh.{axis}: size must be a positive integer or -1 (the rest), got {size!r}"
            )
        if size == -1:
            rest_axes.append(axis)
        else:
            shape[axis] = size
    fixed = math.prod(shape[a] for a in MESH_AXES if a not in rest_axes)
    if len(rest_axes) > 1:
        raise ValueError(f"mesh: at most one axis may be -1, got {rest_axes} in {dict(sizes)}")
    if rest_axes:
        if num_devices % fixed:
            raise ValueError(
                f"mesh.{rest_axes[0]}=-1: the other axes ({fixed} devices) do not divide the "
                f"{num_devices} devices available (mesh config {dict(sizes)})"
            )
        shape[rest_axes[0]] = num_devices // fixed
    elif fixed != num_devices:
        raise ValueError(
            f"mesh: sizes {dict(sizes)} use {fixed} devices but {num_devices} are available; "
            "set one axis to -1 to take the rest"
        )
    return shape


def make_mesh(sizes: Mapping[str, int], devices: Sequence[jax.Device] | None = None) -> Mesh:
    """Builds the ``(data, fsdp, tensor)`` mesh with Auto axis types.

    Args:
      sizes: ``{axis: size}``, e.g. ``config.mesh`` = ``{"data": -1, "fsdp": 1, "tensor": 1}``.
        ``-1`` means all the devices the other axes leave.
      devices: the devices to use; all of ``jax.devices()`` (every host's) by default.
    """
    devices = list(jax.devices() if devices is None else devices)
    shape = resolve_mesh_shape(dict(sizes), len(devices))
    return jax.make_mesh(
        tuple(shape[a] for a in MESH_AXES),
        MESH_AXES,
        axis_types=(AxisType.Auto,) * len(MESH_AXES),
        devices=devices,
    )


def batch_axes(mesh: Mesh) -> tuple[str, ...]:
    """The mesh axes the batch is split over, in mesh order (those of BATCH_AXES it has)."""
    return tuple(a for a in mesh.axis_names if a in BATCH_AXES)


def batch_shard_count(mesh: Mesh | None) -> int:
    """How many pieces the batch is cut into: the product of the batch axes' sizes."""
    if mesh is None:
        return 1
    return math.prod(mesh.shape[a] for a in batch_axes(mesh))


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Sharding of a ``[batch, ...]`` array: batch over the batch axes, replicated otherwise."""
    return NamedSharding(mesh, PartitionSpec(batch_axes(mesh)))


def describe_mesh(mesh: Mesh | None) -> str:
    """A short description for error messages: ``mesh {data: 2, fsdp: 4, tensor: 1}``."""
    if mesh is None:
        return "no mesh (one device)"
    return "mesh {" + ", ".join(f"{a}: {n}" for a, n in mesh.shape.items()) + "}"
