"""Where the CPU demo's step goes: the ConvNet's 3x3 convolutions, forward and both gradients,
in XLA (jax) against PyTorch's eager kernels on the same shapes.

The demo's image tower (``configs/clip.py:demo``, ``models.dual_encoder.CNN_FIELDS``) is three
3x3 SAME convolutions at batch 128: 64x64 3->16, 32x32 16->32, 16x16 32->64. For each one this
times, as the median over ``--repeats`` runs of 10 calls after a warm-up:

- jax: the convolution (``lax.conv_general_dilated``, NHWC/HWIO as ``models.cnn``), its
  gradient with respect to the kernel (what the optimizer needs) and with respect to the
  input (what the stage before needs), each jitted alone; and the kernel gradient written as
  one matrix product of the image patches (im2col) with the output gradient, an alternative
  formulation of the same sum (the relative difference to XLA's is printed).
- PyTorch: ``conv2d`` (NCHW) forward, and forward + backward with only the kernel requiring a
  gradient; the kernel gradient's time is the difference of the two.

Prints one markdown table (milliseconds per call). With ``--step=SPEC`` (a config, e.g.
``configs/clip.py:demo``) it times that run's whole compiled train step instead, built as the
trainer builds it, with the ConvNet's stage as it is (``models.cnn.conv_stage``: a product of
the image patches, the pool a maximum over a reshape) and as it was before 2026-12-07
(``lax.conv_general_dilated``, ReLU, ``reduce_window`` max-pool): the two programs alternate in
one process over the same 20 batches, ``--repeats`` rounds after a warm-up round, and the
table gives the median milliseconds per step of each:

    python benchmarks/conv_gradients.py
    python benchmarks/conv_gradients.py --step=configs/clip.py:demo
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

# (side, in channels, out channels): the demo ConvNet's three stages at 64x64 input.
STAGES = ((64, 3, 16), (32, 16, 32), (16, 32, 64))


def _milliseconds(call: Callable[[], object], repeats: int) -> float:
    """Median over ``repeats`` runs of 10 calls of ``call`` (after one warm-up), per call; a
    jax result is waited for, anything else (PyTorch's eager results) is ready when returned."""
    call()
    runs = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(10):
            out = call()
        jax.block_until_ready(out)
        runs.append((time.perf_counter() - start) * 100.0)
    return statistics.median(runs)


def _conv(x: jax.Array, kernel: jax.Array) -> jax.Array:
    """``[n, h, w, c] x [3, 3, c, o] -> [n, h, w, o]``, stride 1, SAME."""
    return jax.lax.conv_general_dilated(
        x, kernel, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")
    )


def _kernel_gradient_im2col(x: jax.Array, kernel: jax.Array, g: jax.Array) -> jax.Array:
    """The kernel gradient as one product: patches ``[n*h*w, 9c]`` transposed times the output
    gradient ``[n*h*w, o]``."""
    kh, kw, c, o = kernel.shape
    n, h, w, _ = x.shape
    padded = jnp.pad(x, ((0, 0), (kh // 2, kh // 2), (kw // 2, kw // 2), (0, 0)))
    shifted = [padded[:, i : i + h, j : j + w, :] for i in range(kh) for j in range(kw)]
    patches = jnp.concatenate(shifted, axis=-1).reshape(n * h * w, kh * kw * c)
    return (patches.T @ g.reshape(n * h * w, o)).reshape(kernel.shape)


def jax_row(batch: int, side: int, c: int, o: int, repeats: int) -> dict[str, float]:
    keys = jax.random.split(jax.random.key(0), 3)
    x = jax.random.normal(keys[0], (batch, side, side, c))
    kernel = jax.random.normal(keys[1], (3, 3, c, o))
    g = jax.random.normal(keys[2], (batch, side, side, o))
    forward = jax.jit(_conv)
    d_kernel = jax.jit(lambda x, k, g: jax.vjp(lambda k: _conv(x, k), k)[1](g)[0])
    d_input = jax.jit(lambda x, k, g: jax.vjp(lambda x: _conv(x, k), x)[1](g)[0])
    im2col = jax.jit(_kernel_gradient_im2col)
    reference = np.asarray(d_kernel(x, kernel, g))
    error = np.abs(np.asarray(im2col(x, kernel, g)) - reference).max() / np.abs(reference).max()
    return {
        "forward": _milliseconds(lambda: forward(x, kernel), repeats),
        "d_kernel": _milliseconds(lambda: d_kernel(x, kernel, g), repeats),
        "d_input": _milliseconds(lambda: d_input(x, kernel, g), repeats),
        "im2col": _milliseconds(lambda: im2col(x, kernel, g), repeats),
        "im2col_error": float(error),
    }


def torch_row(batch: int, side: int, c: int, o: int, repeats: int) -> dict[str, float]:
    import torch

    torch.manual_seed(0)
    x = torch.randn(batch, c, side, side)
    kernel = torch.randn(o, c, 3, 3, requires_grad=True)
    g = torch.randn(batch, o, side, side)

    def forward():
        with torch.no_grad():
            return torch.nn.functional.conv2d(x, kernel, padding=1)

    def forward_and_d_kernel():
        torch.nn.functional.conv2d(x, kernel, padding=1).backward(g)
        kernel.grad = None

    f = _milliseconds(forward, repeats)
    both = _milliseconds(forward_and_d_kernel, repeats)
    return {"forward": f, "d_kernel": both - f}


def _convolution_stage(x: jax.Array, kernel: jax.Array, bias: jax.Array) -> jax.Array:
    """The ConvNet stage before 2026-12-07: XLA's convolution, ReLU, ``reduce_window`` pool."""
    import flax.linen as nn

    y = _conv(x, kernel) + bias
    return nn.max_pool(nn.relu(y), (2, 2), strides=(2, 2))


def step_table(spec: str, repeats: int) -> None:
    """The compiled train step of ``spec`` with each stage, alternating (see the docstring)."""
    from jaxalign import config as config_lib
    from jaxalign import train
    from jaxalign.models import cnn
    from jaxalign.parallel.sharding import sharded_init

    setup = train.setup_run(config_lib.load(spec, []), jax.devices()[:1])
    stages = {"convolution": cnn.one_per_index(_convolution_stage), "patches": cnn.conv_stage}
    programs = {}
    for name, stage in stages.items():
        cnn.conv_stage = stage  # ConvStage looks it up when the step is traced
        programs[name] = setup.compile_step()[0]
    cnn.conv_stage = stages["patches"]
    stream = iter(setup.task.train_stream())
    batches = [next(stream) for _ in range(20)]
    stream.close()  # its read threads, before the interpreter exits
    init = lambda: sharded_init(
        setup.init_state, setup.mesh, setup.rng, shardings=setup.state_shardings
    )[0]
    states = {name: init() for name in programs}
    times: dict[str, list[float]] = {name: [] for name in programs}
    for round_ in range(repeats + 1):
        for name, program in programs.items():
            state, start = states[name], time.perf_counter()
            for batch in batches:
                state, _ = program(state, batch)
            jax.block_until_ready(state)
            states[name] = state
            if round_:  # the first round warms up
                times[name].append((time.perf_counter() - start) / len(batches) * 1e3)
    medians = {name: statistics.median(t) for name, t in times.items()}
    print(f"`{spec}`, one device, median ms per step over {repeats} rounds of 20 steps\n")
    print("| stage | ms per step | each round |")
    print("|---|---|---|")
    labels = {"convolution": "convolution, reduce_window pool", "patches": "patch product"}
    for name, label in labels.items():
        rounds = ", ".join(f"{t:.1f}" for t in times[name])
        print(f"| {label} | {medians[name]:.1f} | {rounds} |")
    old, new = medians["convolution"], medians["patches"]
    print(f"\nconvolution / patches: {old / new:.2f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--step", default="", help="a config: time its train step instead")
    args = parser.parse_args()
    if args.step:
        step_table(args.step, args.repeats)
        return
    print(f"jax {jax.__version__}, batch {args.batch}, ms per call (median of {args.repeats})\n")
    print("| stage | jax forward | jax kernel grad | jax input grad | jax kernel grad as "
          "im2col (rel. diff.) | PyTorch forward | PyTorch kernel grad |")  # fmt: skip
    print("|---|---|---|---|---|---|---|")
    for side, c, o in STAGES:
        j = jax_row(args.batch, side, c, o, args.repeats)
        t = torch_row(args.batch, side, c, o, args.repeats)
        print(f"| {side}x{side} {c}->{o} | {j['forward']:.1f} | {j['d_kernel']:.1f} | "
              f"{j['d_input']:.1f} | {j['im2col']:.1f} ({j['im2col_error']:.0e}) | "
              f"{t['forward']:.1f} | {t['d_kernel']:.1f} |")  # fmt: skip


if __name__ == "__main__":
    main()
