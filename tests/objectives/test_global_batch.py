"""Every objective on a sharded batch equals the same global batch on one device.

Value and gradients with respect to every float array input and every scalar (scale, bias,
temperature), in float32 (to 1e-5) on meshes of 1, 2, 4 and 8 devices, a 2x4 (data x fsdp)
mesh and a mesh with a tensor axis; in bfloat16 on the 2 and 2x4 meshes. Labels and weights
are inputs too (sharded alike), not differentiated.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxalign.parallel import batch_sharding
from tests.objectives import traced_program
from tests.objectives.cases import CASES, MESHES, mesh_named

# float32: 1e-5 relative, and 1e-5 absolute against the scale of the quantity (the losses are
# O(1); an MMD estimate is a difference of O(1) kernel means, so a small value carries the
# O(1) terms' rounding; a gradient is compared against its largest entry).
F32_TOL = 1e-5
# bfloat16: inputs and their gradients carry 8 significant bits (relative spacing 2**-8 =
# 0.0039); logits and log-sum-exp are float32. A reduction in another order may round a
# gradient entry to the neighbouring bfloat16 value, so gradients are compared to 1e-2 of the
# largest entry and the float32-accumulated loss to 1e-4.
BF16_VALUE_RTOL = 1e-4
BF16_GRAD_TOL = 1e-2


def _loss_and_grads(case, mesh, arrays, scalars, fixed):
    """(value, aux, grads wrt arrays, grads wrt scalars), jitted; ``fixed`` (labels, weights)
    are inputs too, not differentiated."""

    def loss(arrays, scalars, fixed):
        out = case.call(arrays + fixed, scalars, mesh)
        return out if isinstance(out, tuple) else (out, ())

    fn = jax.jit(jax.value_and_grad(loss, argnums=(0, 1), has_aux=True))
    (value, aux), (array_grads, scalar_grads) = fn(arrays, scalars, fixed)
    return value, aux, array_grads, scalar_grads


@functools.cache
def _single_device(case_name, dtype_name):
    case = next(c for c in CASES if c.name == case_name)
    arrays = case.inputs(seed=0, dtype=jnp.dtype(dtype_name))
    scalars = tuple(jnp.float32(s) for s in case.scalars)
    fixed = tuple(jnp.asarray(x) for x in case.fixed_inputs(seed=0))
    return _loss_and_grads(case, None, arrays, scalars, fixed)


def _sharded(case, mesh, dtype):
    place = lambda xs: tuple(jax.device_put(x, batch_sharding(mesh)) for x in xs)
    scalars = tuple(jnp.float32(s) for s in case.scalars)
    return _loss_and_grads(
        case, mesh, place(case.inputs(seed=0, dtype=dtype)), scalars, place(case.fixed_inputs(0))
    )


@pytest.mark.parametrize("mesh_name", list(MESHES))
@pytest.mark.parametrize("case", CASES, ids=str)
def test_float32_equals_one_device(case, mesh_name):
    mesh = mesh_named(mesh_name)
    value, aux, array_grads, scalar_grads = _sharded(case, mesh, jnp.float32)
    ref_value, ref_aux, ref_array_grads, ref_scalar_grads = _single_device(case.name, "float32")
    np.testing.assert_allclose(value, ref_value, rtol=F32_TOL, atol=F32_TOL)
    np.testing.assert_allclose(aux, ref_aux, rtol=F32_TOL, atol=F32_TOL)
    for got, want in zip(
        array_grads + scalar_grads, ref_array_grads + ref_scalar_grads, strict=True
    ):
        assert got.shape == want.shape and got.dtype == want.dtype
        scale = float(jnp.max(jnp.abs(want)))
        np.testing.assert_allclose(got, want, rtol=F32_TOL, atol=F32_TOL * scale)
    for grad in array_grads:
        assert float(jnp.max(jnp.abs(grad))) > 0, "an input received no gradient"


@pytest.mark.parametrize("mesh_name", ["2", "2x4"])
@pytest.mark.parametrize("case", CASES, ids=str)
def test_bfloat16_equals_one_device(case, mesh_name):
    value, aux, array_grads, scalar_grads = _sharded(case, mesh_named(mesh_name), jnp.bfloat16)
    ref_value, ref_aux, ref_array_grads, ref_scalar_grads = _single_device(case.name, "bfloat16")
    assert value.dtype == jnp.float32  # logits and log-sum-exp are float32
    np.testing.assert_allclose(value, ref_value, rtol=BF16_VALUE_RTOL)
    np.testing.assert_allclose(aux, ref_aux, rtol=BF16_VALUE_RTOL)
    for got, want in zip(
        array_grads + scalar_grads, ref_array_grads + ref_scalar_grads, strict=True
    ):
        assert got.dtype == want.dtype
        scale = float(jnp.max(jnp.abs(want.astype(jnp.float32)))) + 1e-30
        np.testing.assert_allclose(
            np.float32(got), np.float32(want), rtol=0, atol=BF16_GRAD_TOL * scale
        )


@pytest.mark.parametrize("case", CASES, ids=str)
def test_bfloat16_close_to_float32(case):
    """bfloat16 inputs give the loss of the same (rounded) inputs in float32."""
    value, aux, _, _ = _single_device(case.name, "bfloat16")
    rounded = tuple(x.astype(jnp.float32) for x in case.inputs(seed=0, dtype=jnp.bfloat16))
    scalars = tuple(jnp.float32(s) for s in case.scalars)
    fixed = tuple(jnp.asarray(x) for x in case.fixed_inputs(seed=0))
    f32_value, f32_aux, _, _ = _loss_and_grads(case, None, rounded, scalars, fixed)
    np.testing.assert_allclose(value, f32_value, rtol=BF16_VALUE_RTOL)
    np.testing.assert_allclose(aux, f32_aux, rtol=BF16_VALUE_RTOL)


def test_host_arrays_need_no_placement():
    """Plain NumPy inputs with a mesh give the one-device value (shard_map places them)."""
    case = CASES[0]
    arrays = [np.asarray(x) for x in case.inputs(seed=1)]
    sharded = case.call(arrays, case.scalars, mesh_named("8"))
    single = case.call(arrays, case.scalars, None)
    np.testing.assert_allclose(sharded, single, rtol=1e-5)


@pytest.mark.parametrize(
    "name", ["clip_loss", "siglip_loss", "nt_xent", "mmd_unbiased_unequal_sizes"]
)
def test_sharded_logits_are_local_by_global(name):
    """With a mesh, no device builds a [global, global] matrix: forward or backward."""
    case = next(c for c in CASES if c.name == name)
    mesh = mesh_named("8")
    arrays = case.inputs(seed=0)
    scalars = tuple(jnp.float32(s) for s in case.scalars)
    grad_fn = jax.grad(lambda a, s: case.call(a, s, mesh), argnums=(0, 1))
    shapes = traced_program.dot_shapes(grad_fn, arrays, scalars)
    global_sizes = set(case.batch_sizes) | {2 * b for b in case.batch_sizes}
    square = [s for s in shapes if len(s) == 2 and s[0] in global_sizes and s[1] in global_sizes]
    assert shapes and not square, f"global-by-global products: {square} among {shapes}"
    local = {b // 8 for b in case.batch_sizes}
    assert any(s[0] in local for s in shapes if len(s) == 2)
