"""The generic train step on the CLIP task: 1 device = 8 devices, compiles once, skips and
counts non-finite updates, cached gradients equal the plain step, the step's random key and
number, parameter groups (learning-rate multipliers, frozen parameters), the parameters' moving
average; the weight-decay mask."""

import pathlib
import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxalign import config as config_lib
from jaxalign.parallel import batch_sharding, make_mesh
from jaxalign.parallel.sharding import activation_context, sharded_init
from jaxalign.tasks import ParamGroup, get_task
from jaxalign.train_lib import TrainState, decay_mask, make_optimizer, make_train_step
from jaxalign.train_lib.step import step_rng, train_step

BATCH = 16
CLIP = str(pathlib.Path(__file__).resolve().parents[2] / "configs" / "clip.py")


def _config(*overrides: str):
    defaults = {
        "data.image_size": "16",
        "data.max_len": "8",
        "model.text.vocab_size": "64",
        "optim.lr": "1e-2",
        "optim.warmup_steps": "2",
        "optim.weight_decay": "0.1",
    }
    defaults.update(o.split("=", 1) for o in overrides)
    return config_lib.load(f"{CLIP}:tiny", [f"{k}={v}" for k, v in defaults.items()])


def _batches(count, seed=0):
    rng = np.random.default_rng(seed)
    for _ in range(count):
        yield {
            "image": rng.normal(size=(BATCH, 16, 16, 3)).astype(np.float32),
            "ids": rng.integers(1, 64, size=(BATCH, 8)).astype(np.int32),
            "mask": np.ones((BATCH, 8), np.int32),
        }


def _setup(config, mesh_shape, steps=10, groups=None, loss_and_grad=None):
    devices = jax.devices()[: int(np.prod(list(mesh_shape.values())))]
    mesh = make_mesh(mesh_shape, devices=devices)
    task = get_task(config, mesh)
    groups = task.param_groups() if groups is None else groups
    tx, _ = make_optimizer(config.optim, steps, groups)
    ema = config.optim.ema_decay > 0

    def init_state(rng):
        return TrainState.create(task.init(rng), tx, ema=ema)

    state, shardings = sharded_init(init_state, mesh, jax.random.key(0))
    traces = []
    inner = loss_and_grad or task.loss_and_grad

    def counted(*args):
        traces.append(1)
        return inner(*args)

    step = make_train_step(
        counted,
        tx,
        seed=config.seed,
        ema_decay=config.optim.ema_decay,
        state_shardings=shardings,
        batch_sharding=batch_sharding(mesh),
    )
    return mesh, state, step, traces


def _run(config, mesh_shape, batches, **kwargs):
    mesh, state, step, traces = _setup(config, mesh_shape, **kwargs)
    losses = []
    with activation_context(mesh):
        for batch in batches:
            state, metrics = step(state, batch)
            losses.append(float(metrics["loss"]))
    return np.array(losses), state, traces


def test_one_device_equals_eight():
    """SigLIP's step (CLIP's: tests/test_train.py, through the whole trainer)."""
    config = _config("objective.loss=siglip", "model.logit_bias_init=-10")
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
    mesh, state, step, _ = _setup(_config("optim.ema_decay=0.9"), {"data": 8})
    good, bad, good2 = _batches(3)
    bad["image"][3, 2, 2, 1] = np.nan
    with activation_context(mesh):
        state, metrics = step(state, good)
        before = jax.device_get(state)
        state, metrics = step(state, bad)
        assert int(metrics["skipped"]) == 1 and int(metrics["nonfinite_in_a_row"]) == 1
        after = jax.device_get(state)
        for field in ("params", "opt_state", "ema_params", "model_state"):
            jax.tree.map(
                np.testing.assert_array_equal, getattr(after, field), getattr(before, field)
            )
        assert int(after.step) == 2 and int(after.nonfinite_total) == 1
        state, metrics = step(state, good2)
    assert int(metrics["skipped"]) == 0 and int(metrics["nonfinite_in_a_row"]) == 0
    assert int(metrics["nonfinite_total"]) == 1
    assert np.isfinite(float(metrics["loss"]))


def test_cached_gradient_step_equals_plain_step():
    batches = list(_batches(2))
    loss_plain, state_plain, _ = _run(_config(), {"data": 4}, batches)
    loss_cached, state_cached, _ = _run(_config("optim.micro_batches=2"), {"data": 4}, batches)
    np.testing.assert_allclose(loss_cached, loss_plain, rtol=1e-5)
    # atol: parameters whose gradient is zero up to float32 rounding (e.g. attention key biases)
    # move by Adam-normalised rounding noise, ~1e-6 here.
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5),
        jax.device_get(state_cached.params),
        jax.device_get(state_plain.params),
    )


@pytest.mark.parametrize("mesh_shape", [{"data": 1}, {"data": 8}])
def test_the_step_gets_fold_in_of_seed_and_step(mesh_shape):
    """The loss sees ``rng = fold_in(key(seed), s)`` and ``step = s`` for the s-th update
    (0-based), whatever the mesh."""
    config = _config("seed=7")
    task = get_task(config, make_mesh(mesh_shape, devices=jax.devices()[: mesh_shape["data"]]))

    def loss_and_grad(params, model_state, batch, rng, step):
        loss, grads, model_state, _ = task.loss_and_grad(params, model_state, batch, rng, step)
        return loss, grads, model_state, {"draw": jax.random.uniform(rng), "step_seen": step}

    mesh, state, step, _ = _setup(config, mesh_shape, loss_and_grad=loss_and_grad)
    with activation_context(mesh):
        for s, batch in enumerate(_batches(3)):
            state, metrics = step(state, batch)
            assert int(metrics["step_seen"]) == s
            want = jax.random.uniform(jax.random.fold_in(jax.random.key(7), s))
            assert (
                float(metrics["draw"]) == float(want) == float(jax.random.uniform(step_rng(7, s)))
            )


def _delta(before, after):
    return jax.tree.map(lambda a, b: np.asarray(b) - np.asarray(a), before, after)


def test_a_fixed_temperature_stays_at_its_init():
    """``model.learn_temperature=False``: the task's parameter groups freeze ``logit_scale``;
    learned, it moves."""
    batch = list(_batches(2))
    for learn in (True, False):
        config = _config("optim.warmup_steps=0", f"model.learn_temperature={learn}")
        scale = float(_run(config, {"data": 1}, batch)[1].params["logit_scale"])
        assert (scale != np.float32(config.model.logit_scale_init)) == learn, (learn, scale)


@pytest.mark.parametrize("micro_batches", [1, 2])
def test_the_step_logs_the_temperature_and_the_bias(micro_batches):
    """The logged ``logit_scale`` is ``exp`` of the parameter before the update (the
    metrics see the step's input parameters); SigLIP's ``logit_bias`` is logged too, CLIP has
    none to log. Both the plain and the cached-gradient paths."""
    for loss, bias in (("siglip", "-7.5"), ("clip", None)):
        overrides = [f"objective.loss={loss}", f"optim.micro_batches={micro_batches}"]
        if bias is not None:
            overrides.append(f"model.logit_bias_init={bias}")
        config = _config(*overrides)
        mesh, state, step, _ = _setup(config, {"data": 1})
        with activation_context(mesh):
            _, metrics = step(state, next(_batches(1)))
        scale = np.exp(np.float32(config.model.logit_scale_init))
        np.testing.assert_allclose(float(metrics["logit_scale"]), scale, rtol=1e-6)
        if bias is None:
            assert "logit_bias" not in metrics
        else:
            assert float(metrics["logit_bias"]) == float(bias)


def test_parameter_groups_scale_and_freeze():
    """One group halves the image tower's rate, another freezes the text tower. Without
    clipping: a clip by the global norm would couple the towers (frozen parameters have no
    gradient in the norm)."""
    config = _config("optim.warmup_steps=0", "optim.clip_norm=0")  # a rate at the first update
    batch = list(_batches(1))
    plain = _run(config, {"data": 1}, batch, groups=())[1]
    groups = (ParamGroup("^image_tower/", 0.5), ParamGroup("^text_tower/", 0.0))
    grouped = _run(config, {"data": 1}, batch, groups=groups)[1]
    _, start, _, _ = _setup(config, {"data": 1}, groups=())
    start = jax.device_get(start.params)
    d_plain = _delta(start, jax.device_get(plain.params))
    d_grouped = _delta(start, jax.device_get(grouped.params))
    # AdamW's step (the decay term included) is proportional to the rate; the frozen tower's
    # group changes nothing else.
    jax.tree.map(
        lambda h, p: np.testing.assert_allclose(h, 0.5 * p, rtol=1e-4, atol=1e-7),
        d_grouped["image_tower"],
        d_plain["image_tower"],
    )
    assert any(np.any(d != 0) for d in jax.tree.leaves(d_grouped["image_tower"]))
    assert all(np.all(d == 0) for d in jax.tree.leaves(d_grouped["text_tower"]))
    # Frozen parameters keep no Adam moments: fewer optimizer values than their size twice
    # (scalars aside: each group keeps its own step count).
    count = lambda state: sum(x.size for x in jax.tree.leaves(state.opt_state) if x.ndim)
    text_size = sum(x.size for x in jax.tree.leaves(start["text_tower"]))
    assert count(plain) - count(grouped) == 2 * text_size


def test_moving_average_of_the_parameters():
    config = _config("optim.ema_decay=0.75")
    mesh, state, step, _ = _setup(config, {"data": 1})
    ema = jax.device_get(state.ema_params)
    jax.tree.map(np.testing.assert_array_equal, ema, jax.device_get(state.params))
    with activation_context(mesh):
        for batch in _batches(3):
            state, _ = step(state, batch)
            params = jax.device_get(state.params)
            ema = jax.tree.map(lambda e, p: 0.75 * e + 0.25 * p, ema, params)
            jax.tree.map(
                lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7),
                jax.device_get(state.ema_params),
                ema,
            )
    variables = state.eval_variables()
    assert variables["params"] is state.ema_params  # evals read the average
    assert _setup(_config(), {"data": 1})[1].ema_params is None  # off: nothing kept


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


def test_frozen_gradients_stay_out_of_the_clipping_norm():
    """A frozen parameter's (large) gradients must not shrink the trainable ones' through the
    global-norm clip: the trainable parameter moves as under an optimizer that never saw the
    frozen one. Two steps with different frozen gradients, so Adam's scale invariance cannot
    hide a leak."""
    optim = _config("optim.clip_norm=1.0", "optim.warmup_steps=0").optim
    tx, _ = make_optimizer(optim, 10, (ParamGroup("^frozen", 0.0),))
    alone, _ = make_optimizer(optim, 10)
    params = {"frozen": jnp.ones(3), "trained": jnp.ones(3)}
    state, state_alone = tx.init(params), alone.init({"trained": params["trained"]})
    trained, trained_alone = params, {"trained": params["trained"]}
    for frozen_grad in (4.0, 40.0):
        grads = {"frozen": jnp.full(3, frozen_grad), "trained": jnp.array([3.0, 0.0, 0.0])}
        updates, state = tx.update(grads, state, trained)
        trained = {k: v + updates[k] for k, v in trained.items()}
        updates, state_alone = alone.update(
            {"trained": grads["trained"]}, state_alone, trained_alone
        )
        trained_alone = {"trained": trained_alone["trained"] + updates["trained"]}
    np.testing.assert_array_equal(trained["frozen"], params["frozen"])
    np.testing.assert_allclose(trained["trained"], trained_alone["trained"], rtol=1e-6)


def test_an_update_that_overflows_the_parameters_is_skipped():
    # Finite loss and gradients, but the update takes a parameter past float32's range.
    def loss_and_grad(params, model_state, batch, rng, step):
        grads = {"w": jnp.full((2,), -3e38, jnp.float32) * batch["x"].mean()}
        return jnp.float32(1.0), grads, model_state, {}

    tx = optax.sgd(1.0)
    params = {"w": jnp.full((2,), 3e38, jnp.float32)}
    state = TrainState.create({"params": params}, tx)
    new, metrics = train_step(loss_and_grad, tx, state, {"x": jnp.ones((4,))}, seed=0)
    assert np.isfinite(float(metrics["loss"]))  # and the gradients are finite by construction
    assert int(metrics["skipped"]) == 1 and int(new.nonfinite_in_a_row) == 1
    np.testing.assert_array_equal(new.params["w"], params["w"])


def test_the_finite_check_is_computed_once_for_all_leaves():
    """The compiled step holds fewer scalar ``and``s than the parameters have leaves: the finite
    check is not copied into each leaf's update (``step._all_finite``; it was, a chain of one
    ``and`` per leaf copied into each leaf's update: 6,451 of them here)."""
    mesh, state, step, _ = _setup(_config(), {"data": 1})
    batch = next(_batches(1))
    with activation_context(mesh):
        program = step.lower(state, batch).compile().as_text()
    ands = len(re.findall(r"= pred\[\] and\(", program))
    leaves = len(jax.tree.leaves(state.params))
    assert leaves > 20, leaves
    assert ands < leaves, (ands, leaves)
