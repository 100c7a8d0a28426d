"""A small CNN for small images (LeNet / DTN scale): the feature extractor of the
domain-adaptation tasks (digits -> blended digits, as MNIST -> MNIST-M in DANN, Ganin et al.
2016) and the image tower of the CPU demo's dual encoder (preset ``tiny-cnn``).

``[batch, H, W, C]`` -> ``[batch, features]``: two or more conv (k x k, ReLU, 2x2 max-pool)
stages, then a dense layer over the flattened map (so where things are survives). No batch
norm, so the features never depend on how the batch is split over devices.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxalign.models.layers import REMAT_POLICIES, Dtype, dense


def _one_per_index(fn: Callable[..., jax.Array]) -> Callable[..., jax.Array]:
    """``fn`` whose ``jax.vmap`` calls ``fn`` once per index of the mapped axis (unrolled)
    and stacks the results, instead of batching its operations."""
    mapped = jax.custom_batching.custom_vmap(fn)

    @mapped.def_vmap
    def rule(axis_size: int, in_batched: Sequence[bool], *args: jax.Array):
        args = [a if batched else jnp.broadcast_to(a, (axis_size, *a.shape))
                for a, batched in zip(args, in_batched, strict=True)]  # fmt: skip
        outs = [mapped(*(a[i] for a in args)) for i in range(axis_size)]
        stacked = jax.tree.map(lambda *xs: jnp.stack(xs), *outs)
        return stacked, jax.tree.map(lambda _: True, stacked)

    return mapped


def one_per_index(fn: Callable[..., jax.Array]) -> Callable[..., jax.Array]:
    """``fn`` (of arrays, to one array) with its values and gradients, except that under
    ``jax.vmap`` it runs once per index of the mapped axis, forward and backward, instead of
    batching its operations. For the conv stage over different kernels (a study's seeds
    trained together, ``jaxalign.studies.seed_bundle``): when the stage was XLA's convolution,
    a vmapped one became a grouped convolution, measured 30x slower (forward) on CPU than the
    convolutions one by one (docs/benchmarks.md, "Seeds as one program"); the stage is now a
    patch product (``_stage``) and still runs one seed at a time, as measured then."""
    forward = _one_per_index(fn)
    backward = _one_per_index(lambda *args: jax.vjp(fn, *args[:-1])[1](args[-1]))

    @jax.custom_vjp
    def wrapped(*args: jax.Array) -> jax.Array:
        return forward(*args)

    wrapped.defvjp(lambda *args: (forward(*args), args), lambda saved, g: backward(*saved, g))
    return wrapped


def _patches(x: jax.Array, size: int) -> jax.Array:
    """``[n, h, w, c] -> [n, h, w, size * size * c]``: each position's ``size x size`` window
    (SAME zero padding), ordered (row, column, channel) as an HWIO kernel flattens."""
    _, h, w, _ = x.shape
    low, high = (size - 1) // 2, size // 2
    padded = jnp.pad(x, ((0, 0), (low, high), (low, high), (0, 0)))
    shifted = [padded[:, i : i + h, j : j + w, :] for i in range(size) for j in range(size)]
    return jnp.concatenate(shifted, axis=-1)


def _stage(x: jax.Array, kernel: jax.Array, bias: jax.Array) -> jax.Array:
    """Conv (stride 1, SAME) + bias, 2x2 max-pool, ReLU: ``[n, h, w, c]`` with kernel
    ``[k, k, c, o]`` -> ``[n, h / 2, w / 2, o]``.

    The convolution is one matrix product of the image patches with the flattened kernel
    (im2col) and the pool a maximum over a reshape, so that the backward pass is matrix
    products and element-wise work: XLA's CPU kernel gradient of a convolution and the
    gradient of ``reduce_window``'s max-pool are several times slower than PyTorch's
    (``benchmarks/conv_gradients.py``, docs/performance.md). ReLU after the pool equals ReLU
    before it (both monotone) on a quarter of the values."""
    n, h, w, _ = x.shape
    size, _, c, o = kernel.shape
    patches = _patches(x, size).reshape(n * h * w, size * size * c)
    y = (patches @ kernel.reshape(size * size * c, o)).reshape(n, h, w, o) + bias
    pooled = y.reshape(n, h // 2, 2, w // 2, 2, o).max(axis=(2, 4))
    return nn.relu(pooled)


conv_stage = one_per_index(_stage)


class ConvParams(nn.Module):
    """``nn.Conv``'s parameters, with their logical axes: ``(kernel [k, k, c, channels],
    bias [channels])`` for ``c`` input channels."""

    channels: int
    kernel_size: int

    @nn.compact
    def __call__(self, in_channels: int) -> tuple[jax.Array, jax.Array]:
        size = (self.kernel_size, self.kernel_size, in_channels, self.channels)
        kernel = self.param(
            "kernel",
            nn.with_logical_partitioning(
                nn.initializers.lecun_normal(), (None, None, "channels", "conv_out")
            ),
            size,
            jnp.float32,
        )
        bias = self.param(
            "bias",
            nn.with_logical_partitioning(nn.initializers.zeros_init(), ("conv_out",)),
            (self.channels,),
            jnp.float32,
        )
        return kernel, bias


class ConvStage(nn.Module):
    """``[batch, h, w, c] -> [batch, h / 2, w / 2, channels]``: conv, ReLU, 2x2 max-pool
    (``conv_stage``: one per index under ``jax.vmap``)."""

    channels: int
    kernel_size: int
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        kernel, bias = ConvParams(self.channels, self.kernel_size, name="conv")(x.shape[-1])
        return conv_stage(x.astype(self.dtype), kernel.astype(self.dtype), bias.astype(self.dtype))


class ConvNet(nn.Module):
    """``[batch, H, W, C] -> ([batch, features], intermediates)``.

    Intermediates: ``"conv"`` ``[batch, h, w, channels[-1]]`` (the last conv stage) and
    ``"pooled"`` ``[batch, features]``. H and W must be divisible by ``2 ** len(channels)``.
    """

    channels: Sequence[int] = (32, 64)
    features: int = 256
    kernel_size: int = 5
    remat: str = "none"  # a REMAT_POLICIES name: recompute each stage in the backward pass
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(
        self, images: jax.Array, deterministic: bool = True
    ) -> tuple[jax.Array, dict[str, jax.Array]]:
        del deterministic
        chex.assert_rank(images, 4)
        stride = 2 ** len(self.channels)
        if images.shape[1] % stride or images.shape[2] % stride:
            raise ValueError(
                f"ConvNet: image size {images.shape[1]}x{images.shape[2]} is not divisible by "
                f"{stride} (2 ** {len(self.channels)} pooling stages); images {images.shape}"
            )
        if self.remat not in REMAT_POLICIES:
            raise ValueError(f"unknown remat {self.remat!r}; choose from {sorted(REMAT_POLICIES)}")
        stage = ConvStage
        if self.remat != "none":
            stage = nn.remat(stage, policy=REMAT_POLICIES[self.remat])
        x = images.astype(self.dtype)
        for i, channels in enumerate(self.channels):
            x = stage(channels, self.kernel_size, self.dtype, name=f"conv_{i}")(x)
        out = {"conv": x}
        x = x.reshape(x.shape[0], -1)
        x = nn.relu(dense(self.features, ("mlp", "embed"), dtype=self.dtype, name="fc")(x))
        out["pooled"] = x
        return x, out
