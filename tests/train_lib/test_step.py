"""The generic train step on the CLIP task: 1 device = 8 devices, compiles once, skips and
counts non-finite updates, cached gradients equal the plain step; the weight-decay mask."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from jaxalign.parallel import batch_sharding, make_mesh
from jaxalign.parallel.sharding import activation_context, sharded_init
from jaxalign.tasks import get_task
from jaxalign.train_lib import TrainState, decay_mask, make_optimizer, make_train_step

BATCH = 16


def _config(**objective) -> ml_collections.ConfigDict:
    small = dict(width=32, depth=1, mlp_dim=64, num_heads=2)
    return ml_collections.ConfigDict(
        dict(
            task="clip",
            model=dict(
                preset="tiny",
                dtype="float32",
                remat="none",
                logit_scale_init=float(np.log(1 / 0.07)),
                logit_bias_init=None,
                image=dict(patch_size=8, **small),
                text=dict(vocab_size=64, **small),
            ),
            data=dict(image_size=16, max_len=8),
            objective={**dict(loss="clip", impl="naive", tile=8, label_smoothing=0.0), **objective},
            optim=dict(
                lr=1e-2,
                warmup_steps=2,
                min_lr_ratio=0.1,
                weight_decay=0.1,
                b1=0.9,
                b2=0.98,
                eps=1e-6,
                clip_norm=1.0,
                micro_batches=1,
            ),
        )
    )


def _batches(count, seed=0):
    rng = np.random.default_rng(seed)
    for _ in range(count):
        yield {
            "image": rng.normal(size=(BATCH, 16, 16, 3)).astype(np.float32),
            "ids": rng.integers(1, 64, size=(BATCH, 8)).astype(np.int32),
            "mask": np.ones((BATCH, 8), np.int32),
        }


def _setup(config, mesh_shape, steps=10):
    task = get_task(config)
    mesh = make_mesh(mesh_shape, devices=jax.devices()[: int(np.prod(list(mesh_shape.values())))])
    tx, _ = make_optimizer(config.optim, steps)
    example = task.example_batch(BATCH)

    def init_state(rng):
        variables = task.init(rng, example)
        return TrainState.create(variables["params"], tx)

    state, shardings = sharded_init(init_state, mesh, jax.random.key(0))
    traces = []

    grad_fn = task.make_grad_fn(mesh)

    def counted(params, batch):
        traces.append(1)
        return grad_fn(params, batch)

    step = make_train_step(counted, tx, shardings, batch_sharding(mesh))
    return mesh, state, step, traces


def _run(config, mesh_shape, batches):
    mesh, state, step, traces = _setup(config, mesh_shape)
    losses = []
    with activation_context(mesh):
        for batch in batches:
            state, metrics = step(state, batch)
            losses.append(float(metrics["loss"]))
    return np.array(losses), state, traces


@pytest.mark.parametrize("loss", ["clip", "siglip"])
def test_one_device_equals_eight(loss):
    config = _config(loss=loss)
    if loss == "siglip":
        config.model.logit_bias_init = -10.0
        config.model.logit_scale_init = float(np.log(10.0))
    one, state_one, traces = _run(config, {"data": 1}, _batches(5))
    eight, state_eight, _ = _run(config, {"data": 2, "fsdp": 4}, _batches(5))
    np.testing.assert_allclose(eight, one, rtol=1e-5)
    assert len(traces) == 1  # compiled once for the whole run
    assert not np.allclose(one[0], one[-1])  # it trains
    # Parameters with a zero gradient up to rounding (attention key biases: softmax ignores a
    # per-query shift) drift by Adam-normalised rounding noise, O(1e-5) after 5 steps at lr 1e-2.
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4),
        jax.device_get(state_eight.params),
        jax.device_get(state_one.params),
    )


def test_nonfinite_update_is_skipped_and_counted():
    config = _config()
    mesh, state, step, _ = _setup(config, {"data": 8})
    good, bad, good2 = _batches(3)
    bad["image"][3, 2, 2, 1] = np.nan
    with activation_context(mesh):
        state, metrics = step(state, good)
        before = jax.device_get(state)
        state, metrics = step(state, bad)
        assert int(metrics["skipped"]) == 1 and int(metrics["nonfinite_in_a_row"]) == 1
        after = jax.device_get(state)
        jax.tree.map(np.testing.assert_array_equal, after.params, before.params)
        jax.tree.map(np.testing.assert_array_equal, after.opt_state, before.opt_state)
        assert int(after.step) == 2 and int(after.nonfinite_total) == 1
        state, metrics = step(state, good2)
    assert int(metrics["skipped"]) == 0 and int(metrics["nonfinite_in_a_row"]) == 0
    assert int(metrics["nonfinite_total"]) == 1
    assert np.isfinite(float(metrics["loss"]))


def test_cached_gradient_step_equals_plain_step():
    plain = _config()
    cached = _config()
    cached.optim.micro_batches = 2
    batches = list(_batches(2))
    loss_plain, state_plain, _ = _run(plain, {"data": 4}, batches)
    loss_cached, state_cached, _ = _run(cached, {"data": 4}, batches)
    np.testing.assert_allclose(loss_cached, loss_plain, rtol=1e-5)
    # atol: parameters whose gradient is zero up to float32 rounding (e.g. attention key biases)
    # move by Adam-normalised rounding noise, ~1e-6 here.
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5),
        jax.device_get(state_cached.params),
        jax.device_get(state_plain.params),
    )


def test_decay_mask():
    params = {
        "image_tower": {
            "pos_embedding": jnp.zeros((4, 8)),
            "cls": jnp.zeros((8,)),
            "encoder": {"block_0": {"ln1": {"scale": jnp.zeros(8), "bias": jnp.zeros(8)}}},
            "embedding": {"kernel": jnp.zeros((2, 2, 3, 8))},
        },
        "image_projection": {"kernel": jnp.zeros((8, 4))},
        "logit_scale": jnp.zeros(()),
    }
    mask = decay_mask(params)
    assert mask["image_projection"]["kernel"] and mask["image_tower"]["embedding"]["kernel"]
    assert not mask["image_tower"]["pos_embedding"] and not mask["image_tower"]["cls"]
    assert not mask["logit_scale"]
    assert not any(jax.tree.leaves(mask["image_tower"]["encoder"]))
