"""Throughput, model FLOPs utilisation, and where a train step's time goes.

The FLOPs of one step come from XLA's cost analysis of the compiled, partitioned program (what
one device runs); utilisation divides the achieved FLOP/s per device by the device's peak. The
peaks are the vendors' dense bfloat16 matrix figures; a device not in ``PEAK_FLOPS`` (a CPU, for
one) gets FLOP/s and no utilisation. XLA counts the operations it compiles, rematerialised
forward passes included, so with ``model.remat`` the figure is closer to hardware than to model
FLOPs; a library kernel it calls (cuDNN's fused attention on a GPU) may be counted as nothing,
which would leave attention out of the figure there (not yet checked on a GPU).

Where the time goes, per logged interval (shares of its wall time, between 0 and 1):

- ``input_wait_share``: the time the loop blocked waiting for the next batch (the train stream
  was behind the step);
- ``loss_share``: the step's batch objective alone (CLIP's InfoNCE on the embeddings, forward and
  backward), timed once at start-up by ``objective_seconds`` on the step's own shapes and
  shardings, times the interval's steps. It is an estimate: inside the step XLA may fuse or
  overlap the objective with the towers, so its cost there can differ a little from its cost
  alone. Only tasks that give ``Task.objective_probe`` have it.

``Throughput.means`` gives both over the whole run (all logged intervals), for ``summary.json``.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from jaxalign.parallel.multihost import meet

# Dense bfloat16 peak FLOP/s per device, from the vendors' data sheets, keyed by a substring of
# ``jax.Device.device_kind`` (checked in order; the first match wins).
PEAK_FLOPS: tuple[tuple[str, float], ...] = (
    ("H200", 989e12),
    ("H100", 989e12),  # SXM
    ("A100", 312e12),
    ("L4", 121e12),
    ("TPU v6", 918e12),  # v6e (Trillium)
    ("TPU v5p", 459e12),
    ("TPU v5", 197e12),  # v5e ("TPU v5 lite")
    ("TPU v4", 275e12),
)


def peak_flops(device_kind: str) -> float | None:
    """The dense bfloat16 peak FLOP/s of one device of this kind, or None when unknown."""
    for key, peak in PEAK_FLOPS:
        if key.lower() in device_kind.lower():
            return peak
    return None


def step_flops(compiled: Any) -> float | None:
    """FLOPs one device runs per step, from ``compiled.cost_analysis()`` (None if absent)."""
    try:
        analysis = compiled.cost_analysis()
    except Exception:  # some backends do not implement it
        return None
    if isinstance(analysis, (list, tuple)):  # older jax: one dict per program
        analysis = analysis[0] if analysis else None
    flops = (analysis or {}).get("flops")
    return float(flops) if flops and flops > 0 else None


def objective_seconds(
    probe: tuple[Callable[[Any], jax.Array], Any] | None, *, repeats: int = 5
) -> float | None:
    """Seconds of one forward + backward of a task's batch objective alone, or None.

    Args:
      probe: ``Task.objective_probe()``: ``(fn, inputs)``, ``fn(inputs) -> scalar`` and
        ``inputs`` a pytree of ``jax.ShapeDtypeStruct`` with their shardings (the global
        shapes, e.g. two ``[B, D]`` embeddings over the mesh's batch axes); None: no figure.
      repeats: timed calls after one warm-up; the median is returned.

    ``jax.value_and_grad(fn)`` is compiled for those shapes and run on random normal inputs
    made on the devices in their shardings (no global array on one host). With several
    processes every process must call it (the objective's collectives span them all).
    """
    if probe is None:
        return None
    fn, inputs = probe
    grad = jax.jit(jax.value_and_grad(fn))
    leaves, tree = jax.tree.flatten(inputs)
    keys = jax.random.split(jax.random.key(0), len(leaves))
    values = [
        jax.jit(lambda k, s=s: _random_like(k, s), out_shardings=s.sharding)(k)
        for k, s in zip(keys, leaves, strict=True)
    ]
    args = jax.tree.unflatten(tree, values)
    compiled = grad.lower(args).compile()
    meet("objective probe compiled")  # the processes' first collective follows
    jax.block_until_ready(compiled(args))  # warm-up
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        jax.block_until_ready(compiled(args))
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def _random_like(key: jax.Array, spec: jax.ShapeDtypeStruct) -> jax.Array:
    """Normal values scaled by 1/sqrt(last dim) (about unit rows), or zeros for an integer
    spec."""
    if not jnp.issubdtype(spec.dtype, jnp.floating):
        return jnp.zeros(spec.shape, spec.dtype)
    scale = spec.shape[-1] ** -0.5 if spec.shape else 1.0
    return jax.random.normal(key, spec.shape, spec.dtype) * scale


class Throughput:
    """Examples/s, FLOP/s per device, utilisation and the time shares (module docstring) over
    the steps since the last report.

    Args:
      examples_per_step: the global batch size.
      flops_per_step: per-device FLOPs of one step (``step_flops``), or None.
      peak: per-device peak FLOP/s (``peak_flops``), or None.
      objective_s: seconds of the batch objective per step (``objective_seconds``), or None.
    """

    def __init__(
        self,
        examples_per_step: int,
        flops_per_step: float | None,
        peak: float | None,
        objective_s: float | None = None,
    ):
        self.examples_per_step = examples_per_step
        self.flops_per_step = flops_per_step
        self.peak = peak
        self.objective_s = objective_s
        self._totals = {"seconds": 0.0, "waited": 0.0, "steps": 0}
        self.reset()

    def reset(self) -> None:
        """Starts a new interval now (after compiling, evaluating or checkpointing)."""
        self._start, self._steps, self._waited = time.perf_counter(), 0, 0.0

    def count(self) -> None:
        """One more step finished."""
        self._steps += 1

    def waited(self, seconds: float) -> None:
        """The loop blocked ``seconds`` for a batch."""
        self._waited += seconds

    def report(self) -> dict[str, float]:
        """The interval's figures, then a new interval. Empty when no step was counted."""
        seconds = time.perf_counter() - self._start
        steps, waited = self._steps, self._waited
        self.reset()
        if not steps or seconds <= 0:
            return {}
        for key, value in (("seconds", seconds), ("waited", waited), ("steps", steps)):
            self._totals[key] += value
        out = {
            "steps_per_s": steps / seconds,
            "examples_per_s": steps * self.examples_per_step / seconds,
            **self._shares(seconds, waited, steps),
        }
        if self.flops_per_step:
            out["flops_per_s_per_device"] = steps * self.flops_per_step / seconds
            if self.peak:
                out["mfu"] = out["flops_per_s_per_device"] / self.peak
        return out

    def means(self) -> dict[str, float]:
        """The shares over every reported interval so far (weighted by their time); {} before
        the first report."""
        totals = self._totals
        if not totals["steps"]:
            return {}
        return self._shares(totals["seconds"], totals["waited"], totals["steps"])

    def _shares(self, seconds: float, waited: float, steps: int) -> dict[str, float]:
        out = {"input_wait_share": waited / seconds}
        if self.objective_s is not None:
            out["loss_share"] = self.objective_s * steps / seconds
        return out
