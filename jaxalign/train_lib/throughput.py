"""Throughput and model FLOPs utilisation of a compiled train step.

The FLOPs of one step come from XLA's cost analysis of the compiled, partitioned program (what
one device runs); utilisation divides the achieved FLOP/s per device by the device's peak. The
peaks are the vendors' dense bfloat16 matrix figures; a device not in ``PEAK_FLOPS`` (a CPU, for
one) gets FLOP/s and no utilisation. XLA counts every operation it runs, rematerialised forward
passes included, so with ``model.remat`` the figure is closer to hardware than to model FLOPs.
"""

from __future__ import annotations

import time
from typing import Any

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


class Throughput:
    """Examples/s, FLOP/s per device and utilisation over the steps since the last report.

    Args:
      examples_per_step: the global batch size.
      flops_per_step: per-device FLOPs of one step (``step_flops``), or None.
      peak: per-device peak FLOP/s (``peak_flops``), or None.
    """

    def __init__(self, examples_per_step: int, flops_per_step: float | None, peak: float | None):
        self.examples_per_step = examples_per_step
        self.flops_per_step = flops_per_step
        self.peak = peak
        self.reset()

    def reset(self) -> None:
        """Starts a new interval now (after compiling, evaluating or checkpointing)."""
        self._start, self._steps = time.perf_counter(), 0

    def count(self) -> None:
        """One more step finished."""
        self._steps += 1

    def report(self) -> dict[str, float]:
        """The interval's figures, then a new interval. Empty when no step was counted."""
        seconds = time.perf_counter() - self._start
        steps = self._steps
        self.reset()
        if not steps or seconds <= 0:
            return {}
        out = {
            "steps_per_s": steps / seconds,
            "examples_per_s": steps * self.examples_per_step / seconds,
        }
        if self.flops_per_step:
            out["flops_per_s_per_device"] = steps * self.flops_per_step / seconds
            if self.peak:
                out["mfu"] = out["flops_per_s_per_device"] / self.peak
        return out
