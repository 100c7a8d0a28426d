"""ResNet: shapes and stems, and batch norm over the global batch: sharded over 8 devices it
gives what one device holding the whole batch gives (outputs, gradients, running averages),
which per-device batch norm would not."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec

from jaxalign.models.resnet import ResNet
from jaxalign.parallel import make_mesh

SMALL = dict(stage_sizes=(1, 1), width=8, cifar_stem=True)


def _images(batch=16, size=16, seed=0):
    # Each example offset differently, so per-device statistics would differ from global ones.
    x = jax.random.normal(jax.random.key(seed), (batch, size, size, 3))
    return x + jnp.arange(batch, dtype=jnp.float32)[:, None, None, None] / 4


def _train_step(model, variables, images, weights):
    """A scalar loss of the features, its gradients and the updated running averages."""

    def loss(params):
        (pooled, _), updates = model.apply(
            {"params": params, "batch_stats": variables["batch_stats"]},
            images,
            deterministic=False,
            mutable=["batch_stats"],
        )
        return jnp.sum(jnp.tanh(pooled) * weights), (pooled, updates["batch_stats"])

    (value, (pooled, stats)), grads = jax.value_and_grad(loss, has_aux=True)(variables["params"])
    return value, pooled, grads, stats


@pytest.mark.parametrize(
    "fields, size, features, grid",
    [
        (dict(stage_sizes=(1, 1), width=8, cifar_stem=True), 16, 16, 8),
        (dict(stage_sizes=(1, 1), width=8), 32, 16, 4),  # ImageNet stem: /4, then /2
        (dict(stage_sizes=(1, 1), width=4, block="bottleneck"), 32, 32, 4),
    ],
)
def test_shapes_and_stems(fields, size, features, grid):
    model = ResNet(**fields)
    images = _images(batch=2, size=size)
    variables = nn.unbox(jax.jit(model.init)(jax.random.key(0), images))
    assert sorted(variables) == ["batch_stats", "params"]
    pooled, out = model.apply(variables, images)
    assert pooled.shape == (2, features) == (2, model.features)
    assert out["conv"].shape == (2, grid, grid, features)
    # Evaluation reads the running averages: no mutable collection is needed or changed.
    again, _ = model.apply(variables, images)
    np.testing.assert_array_equal(pooled, again)


def test_bad_fields_are_refused():
    with pytest.raises(ValueError, match="unknown block 'wide'"):
        ResNet(block="wide").init(jax.random.key(0), _images(batch=1))
    with pytest.raises(ValueError, match=r"stage_sizes=\(\) must be"):
        ResNet(stage_sizes=()).init(jax.random.key(0), _images(batch=1))


@pytest.mark.parametrize("mesh_shape", [{"data": 8}, {"data": 2, "fsdp": 4}])
def test_batch_norm_over_the_global_batch(mesh_shape):
    model = ResNet(**SMALL)
    images = _images()
    weights = jax.random.normal(jax.random.key(1), (16, model.features))
    variables = nn.unbox(model.init(jax.random.key(0), images[:1]))
    step = jax.jit(lambda v, x, w: _train_step(model, v, x, w))

    one = step(variables, images, weights)  # the whole batch on one device
    mesh = make_mesh(mesh_shape, jax.devices())
    batch = NamedSharding(mesh, PartitionSpec(("data", "fsdp")))
    replicated = NamedSharding(mesh, PartitionSpec())
    sharded = step(
        jax.device_put(variables, replicated),
        jax.device_put(images, batch),
        jax.device_put(weights, batch),
    )
    assert sharded[1].sharding.spec[0] is not None  # the features stayed split over the batch
    # Each leaf to 1e-5 of itself or of its largest element: the 8 shards' partial sums, added
    # in another order, differ in their last bits, which near 0 is more than 1e-5 of the element
    # (a stem-kernel gradient of 0.049 is 1.6e-6 off on an Intel Xeon, its leaf's largest ~1).
    for a, b in zip(jax.tree.leaves(one), jax.tree.leaves(sharded), strict=True):
        a, b = np.asarray(a), np.asarray(b)
        np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-5 * max(np.abs(a).max(), 0.1))

    # The running averages moved from their start (mean 0, var 1) by 0.1 of the batch's.
    stats = one[3]["stem_norm"]
    assert not np.allclose(stats["mean"], 0.0) and not np.allclose(stats["var"], 1.0)

    # Per-device statistics (each device normalising its own 2 examples) would differ.
    per_device = [
        step(variables, images[i : i + 2], weights[i : i + 2])[1] for i in range(0, 16, 2)
    ]
    assert not np.allclose(np.concatenate(per_device), np.asarray(one[1]), atol=1e-3)
