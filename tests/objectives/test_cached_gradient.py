"""Cached-gradient accumulation equals the plain full-batch step."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxalign import objectives
from jaxalign.parallel import batch_sharding
from tests.objectives.cases import mesh_named

BATCH, IMAGE_DIM, TEXT_DIM, EMBED_DIM = 32, 12, 10, 8


class TinyDualEncoder(nn.Module):
    """Two MLP towers with a LayerNorm, projections to a shared space, a learnable scale."""

    @nn.compact
    def __call__(self, batch):
        def tower(x, name):
            x = nn.gelu(nn.Dense(16, name=f"{name}_hidden")(x))
            x = nn.LayerNorm(name=f"{name}_norm")(x)
            x = nn.Dense(EMBED_DIM, name=f"{name}_proj")(x)
            return x / jnp.linalg.norm(x, axis=-1, keepdims=True)

        self.param("logit_scale", lambda _: jnp.log(1 / 0.07))
        return tower(batch["image"], "image"), tower(batch["text"], "text")


def _setup(mesh):
    rng = np.random.default_rng(0)
    batch = {
        "image": jnp.asarray(rng.normal(size=(BATCH, IMAGE_DIM)), jnp.float32),
        "text": jnp.asarray(rng.normal(size=(BATCH, TEXT_DIM)), jnp.float32),
    }
    if mesh is not None:
        batch = jax.device_put(batch, batch_sharding(mesh))
    model = TinyDualEncoder()
    params = jax.jit(model.init)(jax.random.key(0), batch)
    return model, params, batch


def _loss_fn(mesh, impl):
    def loss_fn(params, embeddings):
        image, text = embeddings
        scale = params["params"]["logit_scale"]
        return objectives.clip_loss(image, text, scale, mesh=mesh, impl=impl, tile=3)

    return loss_fn


@pytest.mark.parametrize(
    ("mesh_name", "impl", "num_microbatches"),
    [
        (None, "naive", 4),
        (None, "tiled", 8),
        ("8", "naive", 2),
        ("8", "ring", 4),
        ("2x4", "ring", 2),
    ],
)
def test_equals_plain_full_batch_step(mesh_name, impl, num_microbatches):
    mesh = None if mesh_name is None else mesh_named(mesh_name)
    model, params, batch = _setup(mesh)
    loss_fn = _loss_fn(mesh, impl)
    tx = optax.adamw(1e-2, weight_decay=1e-4)
    opt_state = tx.init(params)

    def update(params, grads):
        updates, _ = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates)

    @jax.jit
    def plain_step(params, batch):
        loss, grads = jax.value_and_grad(lambda p: loss_fn(p, model.apply(p, batch)))(params)
        return loss, grads, update(params, grads)

    @jax.jit
    def cached_step(params, batch):
        loss, grads = objectives.cached_gradient(
            model.apply, loss_fn, params, batch, num_microbatches=num_microbatches, mesh=mesh
        )
        return loss, grads, update(params, grads)

    plain_loss, plain_grads, plain_params = plain_step(params, batch)
    cached_loss, cached_grads, cached_params = cached_step(params, batch)
    np.testing.assert_allclose(cached_loss, plain_loss, rtol=1e-6)
    for got, want in zip(jax.tree.leaves(cached_grads), jax.tree.leaves(plain_grads), strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * float(jnp.max(jnp.abs(want))))
    for got, want in zip(
        jax.tree.leaves(cached_params), jax.tree.leaves(plain_params), strict=True
    ):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    # The scale (read only by the loss) and every tower received a gradient.
    assert all(float(jnp.max(jnp.abs(g))) > 0 for g in jax.tree.leaves(cached_grads))


def test_microbatches_must_divide_the_per_device_batch():
    mesh = mesh_named("8")
    model, params, batch = _setup(mesh)
    with pytest.raises(ValueError, match=r"num_microbatches=3 must divide the per-device batch 4"):
        objectives.cached_gradient(
            model.apply, _loss_fn(mesh, "naive"), params, batch, num_microbatches=3, mesh=mesh
        )
