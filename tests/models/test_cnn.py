"""The CNN's conv stage (a matrix product of the image patches, bias, max-pool, ReLU) equals
``lax.conv_general_dilated`` + bias, ReLU, ``reduce_window`` max-pool, in values and gradients,
for odd and even kernels; under ``jax.vmap`` over different kernels (what a study's seeds
trained together run) it is each index alone, with no grouped convolution."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxalign.models import cnn


def reference(x, kernel, bias):
    y = jax.lax.conv_general_dilated(
        x, kernel, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")
    )
    return nn.max_pool(nn.relu(y + bias), (2, 2), strides=(2, 2))


def _inputs(seeds, size=5):
    keys = jax.random.split(jax.random.key(0), 3)
    x = jax.random.normal(keys[0], (seeds, 4, 8, 8, 3))
    kernel = 0.3 * jax.random.normal(keys[1], (seeds, size, size, 3, 6))
    bias = 0.1 * jax.random.normal(keys[2], (seeds, 6))
    return x, kernel, bias


@pytest.mark.parametrize("size", [5, 3, 2])
def test_values_and_gradients_are_the_convolutions(size):
    """float32 sums of up to 75 products in another order: equal to 1e-5."""
    x, kernel, bias = (a[0] for a in _inputs(1, size))
    loss = lambda f: lambda *a: jnp.sum(jnp.sin(f(*a)))
    np.testing.assert_allclose(
        cnn.conv_stage(x, kernel, bias), reference(x, kernel, bias), rtol=1e-5, atol=1e-5
    )
    got = jax.jit(jax.grad(loss(cnn.conv_stage), argnums=(0, 1, 2)))(x, kernel, bias)
    want = jax.jit(jax.grad(loss(reference), argnums=(0, 1, 2)))(x, kernel, bias)
    for g, w in zip(got, want, strict=True):
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-5)


def test_vmap_over_kernels_is_each_index_alone():
    """Three seeds' kernels and inputs, values and gradients, against a loop over them; the
    vmapped program holds no grouped convolution (XLA's CPU one is 26-32x slower) and one
    patch product per seed per pass."""
    x, kernel, bias = _inputs(3)
    grad = jax.grad(lambda *a: jnp.sum(jnp.sin(cnn.conv_stage(*a))), argnums=(0, 1, 2))
    batched = jax.jit(jax.vmap(grad))
    got = batched(x, kernel, bias)
    for i in range(3):
        want = grad(x[i], kernel[i], bias[i])
        for g, w in zip(got, want, strict=True):
            np.testing.assert_allclose(g[i], w, rtol=1e-6, atol=1e-6)
    text = batched.lower(x, kernel, bias).as_text()
    assert "feature_group_count = 3" not in text and "batch_group_count = 3" not in text
    compiled = batched.lower(x, kernel, bias).compile().as_text()
    alone = jax.jit(grad).lower(x[0], kernel[0], bias[0]).compile().as_text()
    assert alone.count(" dot(") == 3  # forward, input and kernel gradients
    assert compiled.count(" dot(") == 3 * 3
    assert " convolution(" not in compiled


def test_the_tower_keeps_nn_convs_parameter_names():
    params = cnn.ConvNet(channels=(4, 8), features=16).init(
        jax.random.key(0), jnp.zeros((2, 8, 8, 3))
    )["params"]
    kernel = nn.meta.unbox(params["conv_0"]["conv"]["kernel"])
    bias = nn.meta.unbox(params["conv_1"]["conv"]["bias"])
    assert kernel.shape == (5, 5, 3, 4) and bias.shape == (8,)
