"""The mesh from a config: sizes, -1, Auto axes, batch axes and their sharding."""

import jax
import numpy as np
import pytest
from jax.sharding import AxisType

from jaxalign.parallel import (
    batch_axes,
    batch_shard_count,
    batch_sharding,
    describe_mesh,
    make_mesh,
    resolve_mesh_shape,
)


@pytest.mark.parametrize(
    ("sizes", "want"),
    [
        ({"data": -1}, {"data": 8, "fsdp": 1, "tensor": 1}),
        ({"data": 2, "fsdp": -1}, {"data": 2, "fsdp": 4, "tensor": 1}),
        ({"data": -1, "fsdp": 1, "tensor": 2}, {"data": 4, "fsdp": 1, "tensor": 2}),
        ({"data": 2, "fsdp": 2, "tensor": 2}, {"data": 2, "fsdp": 2, "tensor": 2}),
        ({}, None),  # everything 1: only valid on one device
    ],
)
def test_resolve_mesh_shape(sizes, want):
    if want is None:
        assert resolve_mesh_shape(sizes, 1) == {"data": 1, "fsdp": 1, "tensor": 1}
        with pytest.raises(ValueError, match="use 1 devices but 8 are available"):
            resolve_mesh_shape(sizes, 8)
    else:
        assert resolve_mesh_shape(sizes, 8) == want


@pytest.mark.parametrize(
    ("sizes", "pattern"),
    [
        ({"pipeline": 2}, r"unknown axis 'pipeline'"),
        ({"data": 0}, r"mesh.data: size must be a positive integer or -1 .* got 0"),
        ({"data": 2.0}, r"mesh.data: size must be a positive integer"),
        ({"data": -1, "fsdp": -1}, r"at most one axis may be -1"),
        ({"data": -1, "tensor": 3}, r"mesh.data=-1: the other axes \(3 devices\) do not divide"),
        ({"data": 2, "fsdp": 2}, r"use 4 devices but 8 are available"),
    ],
)
def test_bad_mesh_config_names_the_key(sizes, pattern):
    with pytest.raises(ValueError, match=pattern):
        resolve_mesh_shape(sizes, 8)


def test_make_mesh_is_auto_with_batch_axes():
    mesh = make_mesh({"data": 2, "fsdp": -1, "tensor": 2})
    assert mesh.axis_names == ("data", "fsdp", "tensor")
    assert dict(mesh.shape) == {"data": 2, "fsdp": 2, "tensor": 2}
    assert all(t == AxisType.Auto for t in mesh.axis_types)
    assert batch_axes(mesh) == ("data", "fsdp")
    assert batch_shard_count(mesh) == 4
    assert batch_shard_count(None) == 1
    assert describe_mesh(mesh) == "mesh {data: 2, fsdp: 2, tensor: 2}"


def test_batch_sharding_splits_rows_and_replicates_over_tensor():
    mesh = make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
    x = jax.device_put(np.arange(16.0).reshape(8, 2), batch_sharding(mesh))
    assert x.sharding.shard_shape(x.shape) == (2, 2)
    rows_by_device = {}
    for shard in x.addressable_shards:
        rows_by_device[shard.device] = tuple(np.asarray(shard.data)[:, 0])
    assert len(rows_by_device) == 8
    assert len(set(rows_by_device.values())) == 4  # 4 batch shards, each on 2 tensor devices


def test_make_mesh_on_a_subset_of_devices():
    mesh = make_mesh({"data": -1}, devices=jax.devices()[:2])
    assert mesh.size == 2
