"""Cross-domain objectives: gradient reversal (DANN), multi-kernel MMD and Deep CORAL.

The sharded ones follow the contrastive losses' design: global arrays in (possibly sharded
along the batch over ``('data', 'fsdp')``), a global scalar out, every batch statistic (the
discriminator's mean loss and accuracy, the kernel bandwidth, the covariances) taken over the
global batch, so the value and gradients do not depend on the device count.

References: Ganin et al. 2016 (DANN, gradient reversal and its schedule
``2 / (1 + exp(-10 p)) - 1``); Long et al. 2015 (DAN, multi-kernel MMD with bandwidths set from
the mean pairwise distance); Gretton et al. 2012 (the unbiased, biased and linear-time MMD
estimators); Sun & Saenko 2016 (Deep CORAL). The warm-start schedule's parameters (alpha, lo,
hi, max_iters) are those of the Transfer-Learning-Library's ``WarmStartGradientReverseLayer``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
from jax.sharding import Mesh

from jaxalign.objectives import checks
from jaxalign.parallel.collectives import BatchAxes, map_over_batch
from jaxalign.parallel.mesh import batch_shard_count, describe_mesh

# ---------------------------------------------------------------------------------------------
# Gradient reversal and its schedules.


@jax.custom_vjp
def gradient_reversal(x, coeff):
    """Identity forward; the backward pass multiplies the incoming gradient by ``-coeff``.

    Args:
      x: a pytree of arrays (features entering the domain discriminator).
      coeff: scalar, may be traced (e.g. a schedule of the step). It receives no gradient.
    """
    return x


def _gradient_reversal_fwd(x, coeff):
    return x, coeff


def _gradient_reversal_bwd(coeff, grad):
    reversed_grad = jax.tree.map(lambda g: (-coeff * g).astype(g.dtype), grad)
    return reversed_grad, jnp.zeros_like(coeff)


gradient_reversal.defvjp(_gradient_reversal_fwd, _gradient_reversal_bwd)


def reversal_coefficient(
    progress: jax.Array | float, *, gamma: float = 10.0, lo: float = 0.0, hi: float = 1.0
) -> jax.Array:
    """DANN's coefficient ``lo + (hi - lo) * (2 / (1 + exp(-gamma * p)) - 1)``.

    With the defaults this is Ganin et al.'s ``lambda(p)``, rising from 0 at ``p = 0`` towards 1.
    """
    progress = jnp.asarray(progress, jnp.float32)
    return lo + (hi - lo) * (2.0 / (1.0 + jnp.exp(-gamma * progress)) - 1.0)


def dann_schedule(total_steps: int, *, gamma: float = 10.0) -> Callable[[jax.Array], jax.Array]:
    """An optax-style schedule ``step -> lambda(step / total_steps)`` for the reversal coeff."""
    if total_steps <= 0:
        raise ValueError(f"dann_schedule: total_steps must be positive, got {total_steps}")
    return lambda step: reversal_coefficient(jnp.asarray(step) / total_steps, gamma=gamma)


def warm_start_schedule(
    *, alpha: float = 1.0, lo: float = 0.0, hi: float = 1.0, max_iters: int = 1000
) -> Callable[[jax.Array], jax.Array]:
    """The warm-start variant: ``step -> lo + (hi - lo) * (2 / (1 + exp(-alpha * step /
    max_iters)) - 1)``, i.e. ``reversal_coefficient`` with ``gamma = alpha``."""
    if max_iters <= 0:
        raise ValueError(f"warm_start_schedule: max_iters must be positive, got {max_iters}")
    return lambda step: reversal_coefficient(
        jnp.asarray(step) / max_iters, gamma=alpha, lo=lo, hi=hi
    )


# ---------------------------------------------------------------------------------------------
# Domain discriminator loss.


def _logits_1d(caller: str, name: str, logits: jax.Array, mesh: Mesh | None) -> jax.Array:
    shape = jnp.shape(logits)
    if not (len(shape) == 1 or (len(shape) == 2 and shape[1] == 1)) or shape[0] == 0:
        raise ValueError(
            f"{caller}: {name} must be [batch] or [batch, 1] discriminator logits, got shape "
            f"{shape} ({describe_mesh(mesh)})"
        )
    if not jnp.issubdtype(jnp.result_type(logits), jnp.floating):
        raise TypeError(f"{caller}: {name} must be floating point, got {jnp.result_type(logits)}")
    return jnp.reshape(logits, (shape[0],))


def _domain_adversarial_shard(
    axes: BatchAxes, source_logits: jax.Array, target_logits: jax.Array
) -> tuple[jax.Array, jax.Array]:
    source_logits = source_logits.astype(jnp.float32)
    target_logits = target_logits.astype(jnp.float32)
    # Source is label 1: -log sigmoid(x) = softplus(-x); target is label 0: softplus(x).
    loss_sum = jnp.sum(jax.nn.softplus(-source_logits)) + jnp.sum(jax.nn.softplus(target_logits))
    correct = jnp.sum(source_logits > 0) + jnp.sum(target_logits <= 0)
    loss_sum, correct = axes.sum((loss_sum, correct.astype(jnp.float32)))
    count = (source_logits.shape[0] + target_logits.shape[0]) * axes.size
    return loss_sum / count, correct / count


def domain_adversarial_loss(
    source_logits: jax.Array, target_logits: jax.Array, *, mesh: Mesh | None = None
) -> tuple[jax.Array, jax.Array]:
    """Binary cross-entropy of a domain discriminator, and its accuracy, over the global batch.

    ``[n_source] (or [n_source, 1]) x [n_target] -> (scalar, scalar)``; batch over
    ``('data', 'fsdp')``. Source examples have label 1, target examples label 0; the loss and
    the accuracy (logit > 0 predicts source) are means over all ``n_source + n_target``
    examples, which with equal batch sizes equals the average of the two domains' means.
    The discriminator sees its features through ``gradient_reversal``.
    """
    caller = "domain_adversarial_loss"
    source_logits = _logits_1d(caller, "source_logits", source_logits, mesh)
    target_logits = _logits_1d(caller, "target_logits", target_logits, mesh)
    return map_over_batch(
        _domain_adversarial_shard,
        mesh=mesh,
        batched=[("source_logits", source_logits), ("target_logits", target_logits)],
        caller=caller,
    )


# ---------------------------------------------------------------------------------------------
# Discrepancy measures: multi-kernel MMD and CORAL.

# Bandwidth multipliers 2^k, k = -3..1, of the mean pairwise squared distance (as DAN).
DEFAULT_KERNEL_MULTS: tuple[float, ...] = (0.125, 0.25, 0.5, 1.0, 2.0)
MMD_ESTIMATORS = ("unbiased", "biased", "linear")


def _centre_and_bandwidth(
    axes: BatchAxes, source: jax.Array, target: jax.Array
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Both samples minus the pooled global mean, and the mean of ``|x_i - x_j|^2`` over the
    ordered pairs ``i != j`` of the pooled global batch (as a constant: no gradient).

    Distances do not change under a shift, and centred features keep the ``|x|^2 + |y|^2 -
    2 <x, y>`` expansion accurate. ``sum_{i,j} |x_i - x_j|^2 = 2 n sum_i |x_i - mean|^2``, so
    the bandwidth needs two global sums, not the ``[n, n]`` distance matrix.
    """
    count = (source.shape[0] + target.shape[0]) * axes.size
    mean = jax.lax.stop_gradient(
        axes.sum(jnp.sum(source, axis=0) + jnp.sum(target, axis=0)) / count
    )
    source, target = source - mean, target - mean
    spread = axes.sum(jnp.sum(source**2) + jnp.sum(target**2))
    bandwidth = jax.lax.stop_gradient(jnp.maximum(2.0 * spread / (count - 1), 1e-12))
    return source, target, bandwidth


def _kernel(sq_distance: jax.Array, bandwidth: jax.Array, mults: Sequence[float]) -> jax.Array:
    """Sum over kernels of ``exp(-d^2 / (2 * mult * bandwidth))``, elementwise."""
    widths = 2.0 * jnp.asarray(mults, jnp.float32) * bandwidth  # [kernels]
    return jnp.sum(jnp.exp(-sq_distance[..., None] / widths), axis=-1)


def _kernel_sum(
    rows: jax.Array,
    cols: jax.Array,
    bandwidth: jax.Array,
    mults: Sequence[float],
    diagonal_offset: jax.Array | None = None,
) -> jax.Array:
    """Sum of the ``[rows, cols]`` multi-kernel matrix; with ``diagonal_offset``, the entries
    where ``col == diagonal_offset + row`` (a sample with itself) are left out."""
    sq = (
        jnp.sum(rows**2, axis=1)[:, None]
        + jnp.sum(cols**2, axis=1)[None, :]
        - 2.0 * jnp.einsum("nd,md->nm", rows, cols)
    )
    values = _kernel(jnp.maximum(sq, 0.0), bandwidth, mults)
    if diagonal_offset is not None:
        row_index = diagonal_offset + jnp.arange(rows.shape[0])[:, None]
        values = jnp.where(jnp.arange(cols.shape[0])[None, :] == row_index, 0.0, values)
    return jnp.sum(values)


def _mmd_shard(
    axes: BatchAxes,
    source: jax.Array,
    target: jax.Array,
    *,
    kernel_mults: tuple[float, ...],
    estimator: str,
) -> jax.Array:
    source, target = source.astype(jnp.float32), target.astype(jnp.float32)
    source, target, bandwidth = _centre_and_bandwidth(axes, source, target)
    if estimator == "linear":
        # Disjoint consecutive pairs (2i, 2i+1) of each domain; they lie on one device.
        s_even, s_odd, t_even, t_odd = source[0::2], source[1::2], target[0::2], target[1::2]

        def paired(a, b):
            return _kernel(jnp.sum((a - b) ** 2, axis=1), bandwidth, kernel_mults)

        h = paired(s_even, s_odd) + paired(t_even, t_odd) - paired(s_even, t_odd)
        h = h - paired(s_odd, t_even)
        return axes.sum(jnp.sum(h)) / (source.shape[0] * axes.size // 2)

    all_source, all_target = axes.gather(source), axes.gather(target)
    m, n = all_source.shape[0], all_target.shape[0]
    unbiased = estimator == "unbiased"
    k_ss = _kernel_sum(
        source,
        all_source,
        bandwidth,
        kernel_mults,
        axes.offset(source.shape[0]) if unbiased else None,
    )
    k_tt = _kernel_sum(
        target,
        all_target,
        bandwidth,
        kernel_mults,
        axes.offset(target.shape[0]) if unbiased else None,
    )
    k_st = _kernel_sum(source, all_target, bandwidth, kernel_mults)
    k_ss, k_tt, k_st = axes.sum((k_ss, k_tt, k_st))
    if unbiased:
        return k_ss / (m * (m - 1)) + k_tt / (n * (n - 1)) - 2.0 * k_st / (m * n)
    return k_ss / m**2 + k_tt / n**2 - 2.0 * k_st / (m * n)


def mmd(
    source: jax.Array,
    target: jax.Array,
    *,
    kernel_mults: Sequence[float] = DEFAULT_KERNEL_MULTS,
    estimator: str = "unbiased",
    mesh: Mesh | None = None,
) -> jax.Array:
    """Squared multi-kernel MMD between source and target features over the global batch.

    ``[n_source, dim] x [n_target, dim] -> scalar``; batch over ``('data', 'fsdp')``. The
    kernel is ``sum_k exp(-|x - y|^2 / (2 * mult_k * base))``, where ``base`` is the mean
    pairwise squared distance of the pooled global batch, treated as a constant (no gradient).

    Args:
      source, target: ``[n, dim]`` features, one dtype (computed in float32).
      kernel_mults: bandwidth multipliers, default ``2^k`` for ``k = -3..1``.
      estimator: "unbiased" (MMD^2_u, a sample with itself left out), "biased" (MMD^2_b), or
        "linear" (the linear-time estimator over the disjoint consecutive pairs ``(2i, 2i+1)``;
        needs ``n_source == n_target`` and an even batch on every device). Source and target
        may differ in size for the other two, each at least 2 for "unbiased".
      mesh: the mesh the batch is sharded over, or None for one device.
    """
    caller = "mmd"
    checks.choice(caller, "estimator", estimator, MMD_ESTIMATORS)
    checks.features(caller, mesh, same_batch=estimator == "linear", source=source, target=target)
    kernel_mults = tuple(float(mult) for mult in kernel_mults)
    if not kernel_mults or min(kernel_mults) <= 0:
        raise ValueError(f"{caller}: kernel_mults must be positive numbers, got {kernel_mults}")
    shards = batch_shard_count(mesh)
    if estimator == "linear" and source.shape[0] % (2 * shards):
        raise ValueError(
            f"{caller}: the linear estimator pairs consecutive samples on each device, so the "
            f"batch ({source.shape[0]}) must be a multiple of 2 x {shards} shards "
            f"(source {source.shape}, target {target.shape}; {describe_mesh(mesh)})"
        )
    if estimator == "unbiased" and min(source.shape[0], target.shape[0]) < 2:
        raise ValueError(
            f"{caller}: the unbiased estimator needs at least 2 samples per domain, got "
            f"source {source.shape}, target {target.shape}"
        )
    return map_over_batch(
        _mmd_shard,
        mesh=mesh,
        batched=[("source", source), ("target", target)],
        options={"kernel_mults": kernel_mults, "estimator": estimator},
        caller=caller,
    )


def _covariance(axes: BatchAxes, x: jax.Array) -> jax.Array:
    """``[local, dim] -> [dim, dim]`` covariance of the global batch (``n - 1`` normaliser)."""
    count = x.shape[0] * axes.size
    mean = axes.sum(jnp.sum(x, axis=0)) / count
    centred = x - mean
    return axes.sum(centred.T @ centred) / (count - 1)


def _coral_shard(axes: BatchAxes, source: jax.Array, target: jax.Array) -> jax.Array:
    source, target = source.astype(jnp.float32), target.astype(jnp.float32)
    dim = source.shape[1]
    difference = _covariance(axes, source) - _covariance(axes, target)
    return jnp.sum(difference**2) / (4.0 * dim**2)


def coral(source: jax.Array, target: jax.Array, *, mesh: Mesh | None = None) -> jax.Array:
    """Deep CORAL: ``|C_source - C_target|_F^2 / (4 dim^2)`` with global-batch covariances.

    ``[n_source, dim] x [n_target, dim] -> scalar``; batch over ``('data', 'fsdp')``; the two
    batches may differ in size (each at least 2).
    """
    caller = "coral"
    checks.features(caller, mesh, same_batch=False, source=source, target=target)
    if min(source.shape[0], target.shape[0]) < 2:
        raise ValueError(
            f"{caller}: covariances need at least 2 samples per domain, got source "
            f"{source.shape}, target {target.shape}"
        )
    return map_over_batch(
        _coral_shard,
        mesh=mesh,
        batched=[("source", source), ("target", target)],
        caller=caller,
    )
