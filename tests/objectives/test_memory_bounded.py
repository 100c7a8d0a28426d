"""Tiled and ring contrastive losses equal the naive loss, and never build large logits.

Values and gradients (embeddings and scale / bias) against the naive loss on one device, on
meshes of 1, 2, 4 and 8 devices, 2x4 and 2x1x4 (a tensor axis), for a tile that divides the
per-device batch (4) and one that does not (3, padded), float32 to 1e-5.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxalign import objectives
from jaxalign.objectives import blockwise
from jaxalign.parallel import batch_sharding
from tests.objectives import traced_program
from tests.objectives.cases import mesh_named

BATCH, DIM, TOL = 32, 16, 1e-5
LOSSES = {
    "clip_loss": lambda a, b, s, **kw: objectives.clip_loss(a, b, s[0], **kw),
    "clip_loss_label_smoothing": lambda a, b, s, **kw: objectives.clip_loss(
        a, b, s[0], label_smoothing=0.2, **kw
    ),
    "siglip_loss": lambda a, b, s, **kw: objectives.siglip_loss(a, b, s[0], s[1], **kw),
}
SCALARS = (jnp.float32(2.3), jnp.float32(-1.5))


def _inputs(dtype=jnp.float32):
    rng = np.random.default_rng(7)
    a, b = rng.normal(size=(2, BATCH, DIM))
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    return jnp.asarray(a, dtype), jnp.asarray(b, dtype)


def _value_and_grads(loss, mesh, **options):
    a, b = _inputs()
    if mesh is not None:
        a, b = (jax.device_put(x, batch_sharding(mesh)) for x in (a, b))
    fn = lambda a, b, s: LOSSES[loss](a, b, s, mesh=mesh, **options)
    return jax.jit(jax.value_and_grad(fn, argnums=(0, 1, 2)))(a, b, SCALARS)


@functools.cache
def _naive(loss):
    return _value_and_grads(loss, None, impl="naive")


def _assert_equal(got, want):
    for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
        scale = float(jnp.max(jnp.abs(w)))
        np.testing.assert_allclose(g, w, rtol=TOL, atol=TOL * scale)


@pytest.mark.parametrize("mesh_name", [None, "1", "2", "4", "8", "2x4", "2x1x4"])
@pytest.mark.parametrize("tile", [4, 3])
@pytest.mark.parametrize("impl", ["tiled", "ring"])
@pytest.mark.parametrize("loss", ["clip_loss_label_smoothing", "siglip_loss"])
def test_equals_naive(loss, impl, tile, mesh_name):
    mesh = None if mesh_name is None else mesh_named(mesh_name)
    _assert_equal(_value_and_grads(loss, mesh, impl=impl, tile=tile), _naive(loss))


@pytest.mark.parametrize("impl", ["tiled", "ring"])
def test_plain_clip_loss_equals_naive(impl):
    _assert_equal(
        _value_and_grads("clip_loss", mesh_named("8"), impl=impl, tile=3), _naive("clip_loss")
    )


@pytest.mark.parametrize("impl", ["tiled", "ring"])
def test_tile_larger_than_the_batch(impl):
    _assert_equal(
        _value_and_grads("siglip_loss", mesh_named("2"), impl=impl, tile=1000),
        _naive("siglip_loss"),
    )


@pytest.mark.parametrize("mesh_name", [None, "8"])
@pytest.mark.parametrize("impl", ["tiled", "ring"])
@pytest.mark.parametrize("loss", list(LOSSES))
def test_no_product_larger_than_a_tile(loss, impl, mesh_name):
    """Forward and backward: every pairwise (logits-like) product is at most tile x tile.

    Products with a feature dim or a single column ([rows, dim] gradients, [rows, 1] mean
    logits) are O(rows x dim) and allowed; a product between two sets of rows is a logits
    block and must fit a tile.
    """
    mesh = None if mesh_name is None else mesh_named(mesh_name)
    tile = 4
    fn = jax.grad(
        lambda a, b, s: LOSSES[loss](a, b, s, mesh=mesh, impl=impl, tile=tile), argnums=(0, 1, 2)
    )
    shapes = traced_program.dot_shapes(fn, *_inputs(), SCALARS)
    assert shapes
    assert not _logit_blocks_larger_than(tile, shapes), shapes
    # The naive loss does build [local, global] logits (so the check above can fail).
    naive = jax.grad(lambda a, b, s: LOSSES[loss](a, b, s, mesh=mesh), argnums=(0, 1, 2))
    assert _logit_blocks_larger_than(tile, traced_program.dot_shapes(naive, *_inputs(), SCALARS))


def _logit_blocks_larger_than(tile, shapes):
    blocks = [s for s in shapes if len(s) == 2 and DIM not in s and 1 not in s]
    return [s for s in blocks if max(s) > tile]


def test_ring_sends_tile_sized_chunks_with_ppermute_not_all_gather():
    mesh = mesh_named("8")  # 4 rows per device, sent 2 at a time
    fn = jax.grad(lambda a, b: objectives.clip_loss(a, b, 2.0, mesh=mesh, impl="ring", tile=2))
    eqns = list(traced_program.equations(fn, *_inputs()))
    names = {eqn.primitive.name for eqn in eqns}
    assert "ppermute" in names and "all_gather" not in names
    sent = {tuple(v.aval.shape) for e in eqns if e.primitive.name == "ppermute" for v in e.invars}
    assert sent == {(2, DIM)}  # chunks and their gradient accumulators, never a whole block


def test_bfloat16_inputs_keep_float32_logits():
    a, b = _inputs(jnp.bfloat16)
    for impl in ["naive", "tiled", "ring"]:
        loss, grads = jax.value_and_grad(
            lambda a, impl=impl: objectives.clip_loss(
                a, b, SCALARS[0], mesh=mesh_named("8"), impl=impl, tile=3
            )
        )(a)
        assert loss.dtype == jnp.float32 and grads.dtype == jnp.bfloat16
        np.testing.assert_allclose(loss, _naive("clip_loss")[0], rtol=2e-2)


def test_bad_tile():
    a, b = _inputs()
    with pytest.raises(ValueError, match="clip_loss: tile must be a positive integer, got 0"):
        objectives.clip_loss(a, b, 1.0, impl="tiled", tile=0)
    with pytest.raises(ValueError, match="siglip_loss: impl must be one of"):
        objectives.siglip_loss(a, b, 1.0, 0.0, impl="chunky")


def test_reductions_match_their_definitions():
    rng = np.random.default_rng(0)
    rows, cols = jnp.asarray(rng.normal(size=(2, 10, DIM)), jnp.float32)
    logits = 1.7 * rows @ cols.T - 0.3
    for reduction, want in [
        (blockwise.LogSumExp(), jax.nn.logsumexp(logits, axis=1)),
        (blockwise.SoftplusSum(), jnp.sum(jax.nn.softplus(logits), axis=1)),
    ]:
        got = blockwise.row_reduce(reduction, rows, cols, 1.7, -0.3, tile=3)
        np.testing.assert_allclose(got, want, rtol=1e-5)
