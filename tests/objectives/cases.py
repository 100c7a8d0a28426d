"""The objectives under test, as a table the sharding and NumPy tests both walk.

A case names the arrays an objective takes (their global batch sizes; all divide 8 shards),
the scalars it takes (scale, bias, temperature), how to call it, and its NumPy reference.
"""

import dataclasses
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from jaxalign import objectives
from jaxalign.parallel import make_mesh
from tests.objectives import numpy_reference as ref

DIM = 16


@dataclasses.dataclass(frozen=True)
class Case:
    name: str
    batch_sizes: tuple[int, ...]  # one per array input
    scalars: tuple[float, ...]  # differentiable scalar inputs
    call: Callable  # call(arrays, scalars, mesh) -> scalar or (scalar, aux)
    reference: Callable  # reference(numpy arrays, scalars) -> float or (float, aux)
    normalise: bool = True  # L2-normalise the rows (embeddings)
    logits: bool = False  # 1-D discriminator logits instead of [batch, DIM] features
    row: tuple[int, ...] = (DIM,)  # each array's shape after the batch axis
    # Inputs not differentiated (labels, weights), each [batch, ...], from a seed; the call
    # and the reference get them after the differentiable arrays.
    fixed: Callable[[int], tuple[np.ndarray, ...]] | None = None

    def __str__(self) -> str:
        return self.name

    def inputs(self, seed: int, dtype=jnp.float32) -> tuple[jax.Array, ...]:
        """Random inputs, rounded to ``dtype``, as float32 NumPy-compatible jax arrays."""
        rng = np.random.default_rng(seed)
        arrays = []
        for i, batch in enumerate(self.batch_sizes):
            if self.logits:
                x = rng.normal(size=(batch,)) * 2.0
            else:
                x = rng.normal(size=(batch, *self.row)) + (0.5 * i)  # a shift between domains
                if self.normalise:
                    x /= np.linalg.norm(x, axis=1, keepdims=True)
            arrays.append(jnp.asarray(x, dtype))
        return tuple(arrays)

    def fixed_inputs(self, seed: int) -> tuple[np.ndarray, ...]:
        return self.fixed(seed) if self.fixed else ()


def _patch_mask(seed: int) -> tuple[np.ndarray]:
    """``[32, 6]`` 0 / 1 weights, some rows all 0 and one all 1, as MAE's masks never are: a
    shard's share of the count varies."""
    weights = np.random.default_rng(seed + 100).random((32, 6)) < 0.4
    weights[:3], weights[3] = False, True
    return (weights.astype(np.float32),)


def _chosen_tokens(seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``[32, 6]`` labels in ``[0, DIM)`` and 0 / 1 weights (rows 0-2 with none chosen)."""
    rng = np.random.default_rng(seed + 200)
    weights = (rng.random((32, 6)) < 0.3).astype(np.float32)
    weights[:3] = 0
    return rng.integers(0, DIM, size=(32, 6)).astype(np.int32), weights


CASES = [
    Case(
        "clip_loss",
        (32, 32),
        (2.5,),
        lambda a, s, mesh: objectives.clip_loss(*a, *s, mesh=mesh),
        lambda a, s: ref.clip_loss(*a, *s),
    ),
    Case(
        "clip_loss_label_smoothing",
        (32, 32),
        (2.5,),
        lambda a, s, mesh: objectives.clip_loss(*a, *s, mesh=mesh, label_smoothing=0.1),
        lambda a, s: ref.clip_loss(*a, *s, label_smoothing=0.1),
    ),
    Case(
        "clip_loss_clamped_scale",  # above log(100): the clamp holds, the scale's gradient is 0
        (32, 32),
        (5.0,),
        lambda a, s, mesh: objectives.clip_loss(*a, *s, mesh=mesh),
        lambda a, s: ref.clip_loss(*a, *s),
    ),
    Case(
        "siglip_loss",
        (32, 32),
        (np.log(10.0), -2.0),
        lambda a, s, mesh: objectives.siglip_loss(*a, *s, mesh=mesh),
        lambda a, s: ref.siglip_loss(*a, *s),
    ),
    Case(
        "nt_xent",
        (32, 32),
        (0.2,),
        lambda a, s, mesh: objectives.nt_xent(*a, *s, mesh=mesh),
        lambda a, s: ref.nt_xent(*a, *s),
    ),
    Case(
        "mmd_unbiased_unequal_sizes",
        (32, 24),
        (),
        lambda a, s, mesh: objectives.mmd(*a, mesh=mesh),
        lambda a, s: ref.mmd(*a),
        normalise=False,
    ),
    Case(
        "mmd_biased",
        (16, 40),
        (),
        lambda a, s, mesh: objectives.mmd(*a, estimator="biased", mesh=mesh),
        lambda a, s: ref.mmd(*a, estimator="biased"),
        normalise=False,
    ),
    Case(
        "mmd_linear",
        (32, 32),
        (),
        lambda a, s, mesh: objectives.mmd(*a, estimator="linear", mesh=mesh),
        lambda a, s: ref.mmd(*a, estimator="linear"),
        normalise=False,
    ),
    Case(
        "mmd_custom_kernels",
        (24, 24),
        (),
        lambda a, s, mesh: objectives.mmd(*a, kernel_mults=(0.5, 3.0), mesh=mesh),
        lambda a, s: ref.mmd(*a, kernel_mults=(0.5, 3.0)),
        normalise=False,
    ),
    Case(
        "coral",
        (32, 16),
        (),
        lambda a, s, mesh: objectives.coral(*a, mesh=mesh),
        lambda a, s: ref.coral(*a),
        normalise=False,
    ),
    Case(
        "domain_adversarial_loss",
        (32, 24),
        (),
        lambda a, s, mesh: objectives.domain_adversarial_loss(*a, mesh=mesh),
        lambda a, s: ref.domain_adversarial_loss(*a),
        logits=True,
    ),
]

CASES += [
    Case(
        "masked_mean_squared_error",
        (32, 32),
        (),
        lambda a, s, mesh: objectives.masked_mean_squared_error(*a, mesh=mesh),
        lambda a, s: ref.masked_mean_squared_error(*a),
        normalise=False,
        row=(6, 4),
        fixed=_patch_mask,
    ),
    Case(
        "mean_squared_error",  # the autoencoder's: every position
        (32, 32),
        (),
        lambda a, s, mesh: objectives.masked_mean_squared_error(*a, mesh=mesh),
        lambda a, s: ref.masked_mean_squared_error(*a),
        normalise=False,
        row=(6, 4),
    ),
    Case(
        "masked_token_cross_entropy",
        (32,),
        (),
        lambda a, s, mesh: objectives.masked_token_cross_entropy(*a, mesh=mesh),
        lambda a, s: ref.masked_token_cross_entropy(*a),
        normalise=False,
        row=(6, DIM),
        fixed=_chosen_tokens,
    ),
]

# name -> mesh sizes and how many devices (the first n of jax.devices()).
MESHES = {
    "1": ({"data": 1}, 1),
    "2": ({"data": 2}, 2),
    "4": ({"data": 4}, 4),
    "8": ({"data": 8}, 8),
    "2x4": ({"data": 2, "fsdp": 4}, 8),
    "2x1x4": ({"data": 2, "tensor": 4}, 8),  # the batch replicated over the tensor axis
}


def mesh_named(name: str):
    sizes, count = MESHES[name]
    return make_mesh(sizes, devices=jax.devices()[:count])
