"""Logical axis rules: specs, fsdp sharding of a real preset, and a sharded forward pass that
equals the one-device one."""

import pathlib

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from jaxalign import config as config_lib
from jaxalign import models
from jaxalign.parallel import make_mesh
from jaxalign.parallel.sharding import (
    LOGICAL_RULES,
    abstract_init,
    activation_context,
    logical_to_spec,
    sharded_init,
)

CLIP = str(pathlib.Path(__file__).resolve().parents[2] / "configs" / "clip.py")


def test_each_logical_name_has_one_rule():
    names = [name for name, _ in LOGICAL_RULES]
    assert len(names) == len(set(names))


def test_logical_to_spec():
    mesh = make_mesh({"fsdp": 4, "tensor": 2})
    assert logical_to_spec(("embed", "mlp"), (64, 256), mesh) == P("fsdp", "tensor")
    # a dimension the mesh axis does not divide stays whole
    assert logical_to_spec(("embed", "vocab"), (64, 1001), mesh) == P("fsdp", None)
    # a mesh axis is used once per array
    assert logical_to_spec(("act_batch", "embed"), (8, 64), mesh) == P("fsdp", None)
    # size-1 mesh axes are left out
    assert logical_to_spec(("act_batch",), (8,), make_mesh({"data": 8})) == P("data")
    with pytest.raises(KeyError, match="'bogus' has no rule"):
        logical_to_spec(("bogus",), (8,), mesh)


def test_vit_b16_parameters_are_sharded_over_fsdp():
    """Issue 5: with the fsdp rules on 8 devices, each device holds at most 1/6 of ViT-B/16's
    parameter bytes, measured from the arrays' shards (initialised sharded, never whole)."""
    mesh = make_mesh({"fsdp": 8})
    model = models.build("ViT-B/16")
    variables, _ = sharded_init(
        model.init, mesh, jax.random.key(0), jnp.zeros((1, 224, 224, 3)), jnp.zeros((1, 77), int)
    )
    leaves = jax.tree.leaves(variables)
    total = sum(x.nbytes for x in leaves)
    per_device: dict = {}
    for x in leaves:
        for shard in x.addressable_shards:
            per_device[shard.device] = per_device.get(shard.device, 0) + shard.data.nbytes
    assert len(per_device) == 8
    assert max(per_device.values()) <= total / 6, (max(per_device.values()), total)


def test_activation_constraints_follow_the_rules():
    mesh = make_mesh({"data": 2, "fsdp": 4})

    def constrain(x):
        return nn.with_logical_constraint(x, ("act_batch", "act_length", "act_embed"))

    with activation_context(mesh):
        out = jax.jit(constrain)(jnp.ones((16, 4, 8)))
    assert out.sharding.is_equivalent_to(NamedSharding(mesh, P(("data", "fsdp"))), 3)


@pytest.mark.parametrize("mesh_shape", [{"fsdp": 8}, {"data": 2, "fsdp": 2, "tensor": 2}])
def test_sharded_forward_equals_one_device(mesh_shape):
    model = models.build("tiny")
    images = jax.random.normal(jax.random.key(0), (8, 64, 64, 3))
    ids = jax.random.randint(jax.random.key(1), (8, 16), 0, 1024)
    variables = nn.unbox(jax.jit(model.init)(jax.random.key(2), images, ids))
    reference, _ = jax.jit(model.apply)(variables, images, ids)

    mesh = make_mesh(mesh_shape)
    sharded, shardings = sharded_init(model.init, mesh, jax.random.key(2), images, ids)
    # the same initial values as the init on one device (up to float32 rounding), now sharded
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7), sharded, variables
    )
    assert any(not s.is_fully_replicated for s in jax.tree.leaves(shardings))
    with activation_context(mesh):
        outputs, _ = jax.jit(model.apply)(sharded, images, ids)
    for key in ("image", "text"):
        np.testing.assert_allclose(outputs[key], reference[key], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    "preset, sizes, kernel_axes",
    [
        ("data", {"data": 8, "fsdp": 1, "tensor": 1}, (None, None)),
        ("fsdp", {"data": 1, "fsdp": 8, "tensor": 1}, ("fsdp", None)),
        ("hybrid8", {"data": 1, "fsdp": 8, "tensor": 1}, ("fsdp", None)),
        ("fsdp_tensor4", {"data": 1, "fsdp": 2, "tensor": 4}, ("fsdp", "tensor")),
    ],
)
def test_mesh_presets_split_the_weights_by_their_logical_axes(preset, sizes, kernel_axes):
    """``configs/clip.py:vit_b16,<mesh preset>`` on 8 devices: the mesh it names, and an MLP
    kernel (``embed`` x ``mlp``) split as the rules say on that mesh."""
    config = config_lib.load(f"{CLIP}:vit_b16,{preset}")
    config_lib.validate(config, 8, check_data=False)
    mesh = make_mesh(dict(config.mesh), jax.devices())
    assert dict(mesh.shape) == sizes
    model = models.build("ViT-B/16")
    image, ids = jnp.zeros((1, 224, 224, 3)), jnp.zeros((1, 77), int)
    _, shardings = abstract_init(model.init, mesh, jax.random.key(0), image, ids)
    fc1 = shardings["params"]["image_tower"]["encoder"]["block_0"]["mlp"]["fc1"]["kernel"]
    split = tuple(a if a and mesh.shape[a] > 1 else None for a in (*fc1.spec, None, None)[:2])
    assert split == kernel_axes, fc1.spec
    with pytest.raises(config_lib.ConfigError, match="unknown mesh preset 'zero3'"):
        config_lib.load(f"{CLIP}:vit_b16,zero3")
