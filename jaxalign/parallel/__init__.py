"""Meshes, batch axes and the per-shard runner that objectives use for global statistics."""

from jaxalign.parallel.collectives import BatchAxes, map_over_batch
from jaxalign.parallel.mesh import (
    BATCH_AXES,
    MESH_AXES,
    batch_axes,
    batch_shard_count,
    batch_sharding,
    describe_mesh,
    make_mesh,
    resolve_mesh_shape,
)

__all__ = [
    "BATCH_AXES",
    "MESH_AXES",
    "BatchAxes",
    "batch_axes",
    "batch_shard_count",
    "batch_sharding",
    "describe_mesh",
    "make_mesh",
    "map_over_batch",
    "resolve_mesh_shape",
]
