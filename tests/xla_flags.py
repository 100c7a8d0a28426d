"""The XLA flags of every test process and of the trainer processes tests start.

Tests check what programs compute, never how fast they run, and compiling the tiny presets'
programs is most of the suite's time on CPU. ``--xla_backend_optimization_level=1`` asks LLVM
for less optimisation of the CPU backend's generated code than the default: it cuts each compile
by about a third (``tests/tasks/test_clip_adapt.py``: 128 s -> 88 s of CPU time on this
machine). The HLO program JAX hands to XLA (shardings, collectives) is the same; what changes
is how the CPU backend's code is generated from it (vectorisation, FMA contraction), so float
rounding. Level 0 compiles faster still (71 s) but changes float results by a few
1e-6 (the remat and batch-norm tests' tolerances caught it), so the tests stay at level 1.
One figure is stated at XLA's default level and checked there, in child processes: DANN's 20
steps on 1 device against 8 (issue 14; its adversarial game amplifies rounding, to 7.6e-5 by
step 20 at level 1, under 1e-5 at the default on an AMD EPYC; on an Intel Xeon also at the
default: ``tests/tasks/test_adapt.py`` says how it is checked).
Programs outside the tests (the README's demo, the benchmarks) compile at XLA's default level.

This module imports nothing: ``tests/conftest.py`` reads it before jax is first imported.
"""

FAST_COMPILE = "--xla_backend_optimization_level=1"


def with_devices(count: int | None = None, *, fast_compile: bool = True) -> str:
    """``XLA_FLAGS`` for a test process: ``FAST_COMPILE`` (unless ``fast_compile=False``: XLA's
    default level, for a figure stated at it), and ``count`` simulated CPU devices when given
    (one device otherwise)."""
    flags = [FAST_COMPILE] if fast_compile else []
    if count is not None:
        flags.append(f"--xla_force_host_platform_device_count={count}")
    return " ".join(flags)
