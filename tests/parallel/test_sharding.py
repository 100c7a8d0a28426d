"""Logical axis rules: specs, fsdp sharding of a real preset, and a sharded forward pass that
equals the one-device one."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from jaxalign import models
from jaxalign.parallel import make_mesh
from jaxalign.parallel.sharding import (
    LOGICAL_RULES,
    activation_context,
    logical_to_spec,
    sharded_init,
)


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
    variables = nn.unbox(model.init(jax.random.key(2), images, ids))
    reference, _ = jax.jit(model.apply)(variables, images, ids)

    mesh = make_mesh(mesh_shape)
    sharded, shardings = sharded_init(model.init, mesh, jax.random.key(2), images, ids)
    # the same initial values (up to float32 rounding of the compiled init), now sharded
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7), sharded, variables
    )
    assert any(not s.is_fully_replicated for s in jax.tree.leaves(shardings))
    with activation_context(mesh):
        outputs, _ = jax.jit(model.apply)(sharded, images, ids)
    for key in ("image", "text"):
        np.testing.assert_allclose(outputs[key], reference[key], rtol=1e-5, atol=1e-5)
