"""Input checks shared by the objectives: each error names the function, argument, shapes, mesh.

Shapes and dtypes are static, so these checks run at trace time and cost nothing under
``jax.jit``. Values (a non-finite temperature) can only be checked when they are concrete; under
``jit`` the trainer's non-finite guard catches what slips through.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
from jax.sharding import Mesh

from jaxalign.parallel.mesh import describe_mesh


def _shapes(arrays: dict[str, jax.Array]) -> str:
    return ", ".join(
        f"{name} {tuple(jnp.shape(a))} {jnp.result_type(a)}" for name, a in arrays.items()
    )


def features(
    caller: str,
    mesh: Mesh | None,
    *,
    same_batch: bool,
    **arrays: jax.Array,
) -> None:
    """Checks ``[batch, dim]`` floating arrays with one dtype and one ``dim``.

    With ``same_batch`` their batch sizes must match too (paired embeddings).
    """
    where = f"({_shapes(arrays)}; {describe_mesh(mesh)})"
    for name, array in arrays.items():
        if jnp.ndim(array) != 2:
            raise ValueError(f"{caller}: {name} must be 2-D [batch, dim] {where}")
        if not jnp.issubdtype(jnp.result_type(array), jnp.floating):
            raise TypeError(f"{caller}: {name} must be floating point {where}")
        if jnp.shape(array)[0] == 0:
            raise ValueError(f"{caller}: {name} is an empty batch {where}")
    dtypes = {jnp.result_type(a) for a in arrays.values()}
    if len(dtypes) > 1:
        raise TypeError(f"{caller}: inputs must share one dtype {where}")
    dims = {jnp.shape(a)[1] for a in arrays.values()}
    if len(dims) > 1:
        raise ValueError(f"{caller}: inputs must share the feature dim {where}")
    if same_batch and len({jnp.shape(a)[0] for a in arrays.values()}) > 1:
        raise ValueError(f"{caller}: batch sizes must match {where}")


def scalar(
    caller: str, name: str, value: jax.Array | float, *, positive: bool = False
) -> jax.Array:
    """Checks a scalar hyper-parameter and returns it as a float32 array.

    Raises when it is not 0-d, or, where the value is concrete, not finite (or not positive
    when ``positive``).
    """
    array = jnp.asarray(value)
    if array.ndim != 0:
        raise ValueError(f"{caller}: {name} must be a scalar, got shape {array.shape}")
    if not jnp.issubdtype(array.dtype, jnp.floating) and not jnp.issubdtype(
        array.dtype, jnp.integer
    ):
        raise TypeError(f"{caller}: {name} must be a real number, got dtype {array.dtype}")
    if not isinstance(array, jax.core.Tracer):
        number = float(array)
        if not jnp.isfinite(number):
            raise ValueError(f"{caller}: {name} must be finite, got {number}")
        if positive and number <= 0:
            raise ValueError(f"{caller}: {name} must be positive, got {number}")
    return array.astype(jnp.float32)


def positive_int(caller: str, name: str, value: int) -> None:
    """Checks a static size (a tile edge, a count)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{caller}: {name} must be a positive integer, got {value!r}")


def choice(caller: str, name: str, value: str, allowed: Sequence[str]) -> None:
    """Checks that a string option is one of ``allowed``."""
    if value not in allowed:
        raise ValueError(f"{caller}: {name} must be one of {tuple(allowed)}, got {value!r}")
