"""ResNet (He et al., 2016) with batch norm over the global batch: the SimCLR encoder.

``[batch, H, W, C] -> ([batch, features], intermediates)``, like every image tower here.
Residual stages of basic blocks (two 3x3 convs, ResNet-18/34) or bottleneck blocks (1x1, 3x3,
1x1 with 4x expansion, ResNet-50 and up), each stage after the first halving the map; then a
global average pool. Stem: ImageNet's (7x7 stride-2 conv, 3x3 stride-2 max-pool) or, with
``cifar_stem``, one 3x3 stride-1 conv and no pool, for 32 px images (SimCLR's CIFAR variant).

Batch norm over the global batch. Inside the jitted step every array is the *global* batch,
split over the mesh's batch axes (``data``, ``fsdp``); a mean over the batch axis is therefore a
mean over every example of every device and process, and XLA inserts the all-reduce. So the
statistics of ``nn.BatchNorm`` here (and their running averages) equal those of one device
holding the whole batch, on any mesh: no ``axis_name``, no ``pmap``. (SimCLR's reference
implementation gets the same by an explicit cross-replica mean on TPU.) Training
(``deterministic=False``) uses the batch's statistics and updates ``batch_stats`` when it is
mutable; evaluation uses the running averages.
"""

from __future__ import annotations

from collections.abc import Sequence

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxalign.models.layers import Dtype

BLOCKS = ("basic", "bottleneck")
# (block, stage sizes) of the standard depths.
DEPTHS: dict[int, tuple[str, tuple[int, ...]]] = {
    18: ("basic", (2, 2, 2, 2)),
    34: ("basic", (3, 4, 6, 3)),
    50: ("bottleneck", (3, 4, 6, 3)),
    101: ("bottleneck", (3, 4, 23, 3)),
}
# Image-tower presets (``jaxalign.models.build_image_tower``): ResNet fields.
PRESETS: dict[str, dict] = {
    "resnet18": dict(stage_sizes=DEPTHS[18][1], width=64, block="basic"),
    "resnet50": dict(stage_sizes=DEPTHS[50][1], width=64, block="bottleneck"),
    # A CPU-sized ResNet for 32 px images: three basic stages of one block, 16 -> 64 channels.
    "resnet-tiny": dict(stage_sizes=(1, 1, 1), width=16, block="basic", cifar_stem=True),
}
BN_MOMENTUM = 0.9  # running average = 0.9 * old + 0.1 * batch (SimCLR's TF reference)
BN_EPSILON = 1e-5


def _conv(features: int, kernel: int, strides: int, dtype: Dtype, name: str) -> nn.Conv:
    return nn.Conv(
        features,
        (kernel, kernel),
        strides=(strides, strides),
        padding="SAME",
        use_bias=False,  # the batch norm after it has the shift
        dtype=dtype,
        param_dtype=jnp.float32,
        kernel_init=nn.with_logical_partitioning(
            nn.initializers.variance_scaling(2.0, "fan_out", "normal"),
            (None, None, "channels", "conv_out"),
        ),
        name=name,
    )


def _norm(deterministic: bool, dtype: Dtype, name: str, zero_scale: bool = False) -> nn.BatchNorm:
    """Batch norm over every axis but the channels; ``zero_scale`` starts a residual branch's
    last norm at 0 (Goyal et al., 2017), so each block starts as the identity."""
    scale_init = nn.initializers.zeros_init() if zero_scale else nn.initializers.ones_init()
    return nn.BatchNorm(
        use_running_average=deterministic,
        momentum=BN_MOMENTUM,
        epsilon=BN_EPSILON,
        dtype=dtype,
        param_dtype=jnp.float32,
        scale_init=nn.with_logical_partitioning(scale_init, ("conv_out",)),
        bias_init=nn.with_logical_partitioning(nn.initializers.zeros_init(), ("conv_out",)),
        name=name,
    )


class ResidualBlock(nn.Module):
    """``[b, h, w, c] -> [b, h / strides, w / strides, out]``; ``out = channels`` (basic) or
    ``4 * channels`` (bottleneck). A 1x1 projection (conv + norm) on the shortcut when the
    shape changes."""

    channels: int
    strides: int
    block: str
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, deterministic: bool) -> jax.Array:
        out = self.channels * (4 if self.block == "bottleneck" else 1)
        y = x
        if self.block == "basic":
            convs = [(self.channels, 3, self.strides), (out, 3, 1)]
        else:
            convs = [(self.channels, 1, 1), (self.channels, 3, self.strides), (out, 1, 1)]
        for i, (features, kernel, strides) in enumerate(convs):
            y = _conv(features, kernel, strides, self.dtype, f"conv_{i}")(y)
            last = i == len(convs) - 1
            y = _norm(deterministic, self.dtype, f"norm_{i}", zero_scale=last)(y)
            if not last:
                y = nn.relu(y)
        if x.shape[-1] != out or self.strides != 1:
            x = _conv(out, 1, self.strides, self.dtype, "shortcut_conv")(x)
            x = _norm(deterministic, self.dtype, "shortcut_norm")(x)
        return nn.relu(x + y)


class ResNet(nn.Module):
    """``[batch, H, W, C] -> ([batch, features], intermediates)``; ``features`` is the last
    stage's channels (``width * 2 ** (stages - 1)``, times 4 for bottleneck blocks).

    Intermediates: ``"conv"`` ``[batch, h, w, features]`` (the last stage's map) and
    ``"pooled"`` ``[batch, features]``. Call with ``mutable=["batch_stats"]`` when
    ``deterministic=False`` to get the updated running averages.
    """

    stage_sizes: Sequence[int] = (2, 2, 2, 2)
    width: int = 64
    block: str = "basic"
    cifar_stem: bool = False
    remat: str = "none"  # accepted for the tower interface; only "none" is supported
    dtype: Dtype = jnp.float32

    @property
    def stride(self) -> int:
        """How much smaller the last map is than the image (its side must divide by it)."""
        return 2 ** (len(self.stage_sizes) - 1) * (1 if self.cifar_stem else 4)

    @property
    def features(self) -> int:
        return (
            self.width * 2 ** (len(self.stage_sizes) - 1) * (4 if self.block == "bottleneck" else 1)
        )

    @nn.compact
    def __call__(
        self, images: jax.Array, deterministic: bool = True
    ) -> tuple[jax.Array, dict[str, jax.Array]]:
        chex.assert_rank(images, 4)
        if self.block not in BLOCKS:
            raise ValueError(f"ResNet: unknown block {self.block!r}; choose from {BLOCKS}")
        if self.remat != "none":
            raise ValueError(f"ResNet: remat={self.remat!r} is not supported; use 'none'")
        if not self.stage_sizes or min(self.stage_sizes) < 1:
            raise ValueError(f"ResNet: stage_sizes={tuple(self.stage_sizes)} must be >= 1 each")
        x = images.astype(self.dtype)
        if self.cifar_stem:
            x = _conv(self.width, 3, 1, self.dtype, "stem_conv")(x)
        else:
            x = _conv(self.width, 7, 2, self.dtype, "stem_conv")(x)
        x = nn.relu(_norm(deterministic, self.dtype, "stem_norm")(x))
        if not self.cifar_stem:
            x = nn.max_pool(x, (3, 3), strides=(2, 2), padding="SAME")
        for stage, blocks in enumerate(self.stage_sizes):
            for i in range(blocks):
                strides = 2 if stage > 0 and i == 0 else 1
                x = ResidualBlock(
                    self.width * 2**stage,
                    strides,
                    self.block,
                    self.dtype,
                    name=f"stage_{stage}_block_{i}",
                )(x, deterministic)
        out = {"conv": x}
        pooled = jnp.mean(x, axis=(1, 2))
        out["pooled"] = pooled
        return pooled, out
