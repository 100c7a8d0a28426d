"""What jaxalign does on one accelerator: step speed and utilisation, loss batch, input rate.

Three measurements, each written as a Markdown table (to stdout and to ``--out``):

1. The train step of ``configs/clip.py:vit_b16`` (bfloat16, ``model.remat=none`` so that XLA's
   FLOP count of the compiled step is the model's own, not rematerialised extra) on one device,
   on one synthetic batch kept on the device: ``--steps`` steps after ``--warmup`` ones; images/s,
   the step time, FLOPs per step (XLA's cost analysis of the compiled program), achieved FLOP/s
   and model FLOPs utilisation against the device's dense bfloat16 peak
   (``jaxalign.train_lib.throughput.PEAK_FLOPS``, vendors' data sheets; the peak is printed).
2. For each loss ``impl`` (naive, tiled, ring; CLIP's InfoNCE on ``--loss-dim`` float32
   embeddings, value and gradient), the largest power-of-two global batch whose compiled loss +
   gradient fits one device (``compiled.memory_analysis()``: arguments + outputs + temporaries,
   at most 90% of the device's ``bytes_limit``; ``--budget-gib`` where the device reports none),
   searched up to ``2**--loss-max-log2``, and the measured time of one loss + gradient there.
3. The input pipeline (``benchmarks/input_pipeline.py``: JPEG decode, random resized crop to the
   step's image size, flip) on this host's cores, images/s per ``worker_count``.

Each part stops at ``--budget-s`` seconds from the start (later rows say ``skipped``); a part
that fails writes its error in its row and the others still run.

    bash benchmarks/accelerator.sh                 # on a GPU host: about 8 minutes at most
    bash benchmarks/accelerator.sh --cpu-smoke     # the same code on tiny shapes, CPU, < 1 min
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import sys
import tempfile
import time
import traceback
from collections.abc import Callable

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GIB = 2**30


def _parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cpu-smoke", action="store_true", help="tiny shapes on CPU (< 1 min)")
    parser.add_argument("--out", default="accelerator.md", help="the Markdown file written")
    parser.add_argument("--preset", default="vit_b16", help="a configs/clip.py preset")
    parser.add_argument("--batch", type=int, default=256, help="the step's global batch")
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--warmup", type=int, default=5, help="at least 1: it compiles")
    parser.add_argument("--loss-dim", type=int, default=512)
    parser.add_argument("--loss-min-log2", type=int, default=12)
    parser.add_argument("--loss-max-log2", type=int, default=20)
    parser.add_argument("--budget-gib", type=float, default=16.0, help="when no bytes_limit")
    parser.add_argument("--pipeline-images", type=int, default=1024)
    parser.add_argument("--workers", default="0,8", help="worker_count values to measure")
    parser.add_argument("--budget-s", type=float, default=450.0, help="stop starting parts")
    args = parser.parse_args()
    args.warmup = max(1, args.warmup)
    if args.cpu_smoke:  # the same code paths, sized for seconds on two CPU cores
        args.preset, args.batch, args.steps, args.warmup = "tiny", 16, 3, 1
        args.loss_dim, args.loss_min_log2, args.loss_max_log2 = 32, 6, 9
        args.budget_gib, args.pipeline_images, args.workers = 0.25, 32, "0"
        os.environ.setdefault("JAX_PLATFORMS", "cpu")
    return args


ARGS = _parse()
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from jaxalign import config as config_lib  # noqa: E402
from jaxalign import objectives, train  # noqa: E402
from jaxalign.parallel import batch_sharding, make_mesh  # noqa: E402
from jaxalign.parallel.sharding import sharded_init  # noqa: E402
from jaxalign.train_lib.throughput import peak_flops  # noqa: E402

STARTED = time.perf_counter()
Table = tuple[list[str], list[list[str]]]  # header, rows


def _device() -> jax.Device:
    return jax.devices()[0]


def _over_budget() -> bool:
    return time.perf_counter() - STARTED > ARGS.budget_s


def _guarded(part: Callable[[], Table], header: list[str]) -> Table:
    """``part()``, or one row saying why it did not run (over budget) or how it failed."""
    if _over_budget():
        return header, [["skipped: --budget-s reached"] + ["-"] * (len(header) - 1)]
    try:
        return part()
    except Exception as error:  # recorded in the table; the other parts still run
        traceback.print_exc()
        message = f"error: {type(error).__name__}: {str(error).splitlines()[0][:120]}"
        return header, [[message] + ["-"] * (len(header) - 1)]


# --- 1. the train step --------------------------------------------------------------------------

STEP_HEADER = [
    "preset",
    "global batch",
    "dtype",
    "images/s",
    "step (ms)",
    "GFLOP/step",
    "TFLOP/s",
    "peak TFLOP/s",
    "MFU",
]


def _synthetic_batch(spec, mesh):
    """Random images in [-1, 1], token ids below 1000 (every preset's vocabulary is larger),
    full masks, on the device with the batch's sharding."""
    rng = np.random.default_rng(0)
    batch = {
        "image": rng.uniform(-1, 1, spec["image"].shape).astype(np.float32),
        "ids": rng.integers(1, 1000, spec["ids"].shape, dtype=np.int32),
        "mask": np.ones(spec["mask"].shape, np.int32),
    }
    return jax.device_put(batch, batch_sharding(mesh))


def step_table() -> Table:
    overrides = [
        f"train.global_batch_size={ARGS.batch}",
        f"objective.tile={ARGS.batch}",
        "model.dtype=bfloat16",
        "model.remat=none",
    ]
    config = config_lib.load(f"{ROOT}/configs/clip.py:{ARGS.preset}", overrides)
    setup = train.setup_run(config, jax.devices()[:1], prepare_data=False)
    compiled, flops = setup.compile_step()
    state, _ = sharded_init(
        setup.init_state, setup.mesh, setup.rng, shardings=setup.state_shardings
    )
    batch = _synthetic_batch(setup.task.batch_spec(), setup.mesh)
    for _ in range(ARGS.warmup):
        state, metrics = compiled(state, batch)
    jax.block_until_ready(metrics)
    started = time.perf_counter()
    for _ in range(ARGS.steps):
        state, metrics = compiled(state, batch)
    jax.block_until_ready(metrics)
    seconds = (time.perf_counter() - started) / ARGS.steps
    peak = peak_flops(_device().device_kind)
    achieved = flops / seconds if flops else None
    row = [
        ARGS.preset,
        str(ARGS.batch),
        "bfloat16",
        f"{ARGS.batch / seconds:,.1f}",
        f"{1e3 * seconds:,.2f}",
        f"{flops / 1e9:,.1f}" if flops else "-",
        f"{achieved / 1e12:,.2f}" if achieved else "-",
        f"{peak / 1e12:,.0f}" if peak else "- (unknown device)",
        f"{achieved / peak:.1%}" if achieved and peak else "-",
    ]
    return STEP_HEADER, [row]


# --- 2. the largest loss batch ------------------------------------------------------------------

LOSS_HEADER = ["impl", "largest global batch that fits", "bytes (GiB)", "loss + grad (ms)"]


def _loss_budget() -> tuple[float, str]:
    stats = getattr(_device(), "memory_stats", lambda: None)()
    if stats and stats.get("bytes_limit"):
        free = stats["bytes_limit"] - stats.get("bytes_in_use", 0)
        return 0.9 * free, "90% of the device's free memory (bytes_limit - bytes_in_use)"
    return ARGS.budget_gib * GIB, f"--budget-gib {ARGS.budget_gib}"


def _compile_loss(impl: str, batch: int):
    mesh = make_mesh({"data": 1}, devices=jax.devices()[:1])

    def loss(image, text, scale):
        return objectives.clip_loss(image, text, scale, mesh=mesh, impl=impl, tile=1024)

    emb = jax.ShapeDtypeStruct((batch, ARGS.loss_dim), jnp.float32, sharding=batch_sharding(mesh))
    fn = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2)))
    compiled = fn.lower(emb, emb, jax.ShapeDtypeStruct((), jnp.float32)).compile()
    stats = compiled.memory_analysis()
    used = stats.temp_size_in_bytes + stats.argument_size_in_bytes + stats.output_size_in_bytes
    return compiled, mesh, used


def _time_loss(compiled, mesh, batch: int) -> float:
    keys = jax.random.split(jax.random.key(0), 2)
    image, text = (
        jax.device_put(
            jax.random.normal(k, (batch, ARGS.loss_dim)) / np.sqrt(ARGS.loss_dim),
            batch_sharding(mesh),
        )
        for k in keys
    )
    scale = jnp.float32(np.log(1 / 0.07))
    jax.block_until_ready(compiled(image, text, scale))  # warm-up
    times = []
    for _ in range(3):
        started = time.perf_counter()
        jax.block_until_ready(compiled(image, text, scale))
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def _largest_fitting(impl: str, budget: float) -> list[tuple[int, int, object, object]]:
    """``(batch, bytes, compiled, mesh)`` of the two largest powers of two, searched from the
    smallest up, whose compiled loss + gradient fits ``budget``; the search stops at the first
    that does not (or fails to compile, as an out-of-memory while autotuning would). The
    compiled programs are kept, so the timed sizes are not compiled again."""
    fitting = []
    for log2 in range(ARGS.loss_min_log2, ARGS.loss_max_log2 + 1):
        if _over_budget():
            break
        try:
            compiled, mesh, used = _compile_loss(impl, 2**log2)
        except Exception as error:  # treated as "does not fit"
            print(f"{impl} at {2**log2}: {type(error).__name__}: {error}", file=sys.stderr)
            break
        if used > budget:
            break
        fitting.append((2**log2, used, compiled, mesh))
        fitting = fitting[-2:]  # only the two largest are timed (see loss_table)
    return fitting


def loss_table() -> Table:
    budget, _ = _loss_budget()
    rows = []
    for impl in objectives.contrastive.IMPLS:
        fitting = _largest_fitting(impl, budget)
        row = [impl, f"< {2**ARGS.loss_min_log2}", "-", "-"]
        for batch, used, compiled, mesh in reversed(fitting):  # the largest; the one below
            if _over_budget():
                break
            capped = " (search's cap)" if batch == 2**ARGS.loss_max_log2 else ""
            row = [impl, f"{batch:,}{capped}", f"{used / GIB:.2f}", "-"]
            try:
                row[3] = f"{1e3 * _time_loss(compiled, mesh, batch):,.1f}"
                break
            except Exception as error:  # e.g. out of memory at run time: one size down
                print(f"{impl} at {batch}: {type(error).__name__}: {error}", file=sys.stderr)
                row[1] += " (ran out at run time)"
        rows.append(row)
    return LOSS_HEADER, rows


# --- 3. the input pipeline ----------------------------------------------------------------------

PIPELINE_HEADER = ["worker_count", "images/s", "CPU cores used", "image size"]


def pipeline_table() -> Table:
    import input_pipeline  # benchmarks/input_pipeline.py

    size = 32 if ARGS.cpu_smoke else 224
    batch = 16 if ARGS.cpu_smoke else 64
    rows = []
    with tempfile.TemporaryDirectory() as directory:
        shards = input_pipeline.write_shards(directory, ARGS.pipeline_images, 4, seed=0)
        timed = max(2, ARGS.pipeline_images // batch)
        for workers in (int(w) for w in ARGS.workers.split(",")):
            iterator, close = input_pipeline.our_batches(shards, size, batch, workers, None)
            try:
                result = input_pipeline.measure(iterator, batch, 1, timed)
            finally:
                close()
            rows.append(
                [
                    str(workers),
                    f"{result['images_per_s']:,.1f}",
                    f"{result['cores']:.2f}",
                    f"{size} x {size}",
                ]
            )
    return PIPELINE_HEADER, rows


# --- the report ---------------------------------------------------------------------------------


def _markdown(table: Table) -> str:
    header, rows = table
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def main() -> None:
    """Writes each part as soon as it is measured (to stdout and ``--out``), so a run stopped
    by a time limit keeps what it had."""
    device = _device()
    _, budget_note = _loss_budget()
    command = "bash benchmarks/accelerator.sh" + (" --cpu-smoke" if ARGS.cpu_smoke else "")
    parts: list[Callable[[], str]] = [
        lambda: (
            f"# jaxalign on {device.device_kind} ({device.platform})\n\n"
            f"`{command}`, {datetime.date.today()}, jax {jax.__version__}, host "
            f"{platform.processor() or platform.machine()} with {os.cpu_count()} cores.\n"
        ),
        lambda: (
            f"## Train step: `configs/clip.py:{ARGS.preset}`, synthetic data, "
            f"{ARGS.steps} steps\n\n" + _markdown(_guarded(step_table, STEP_HEADER)) + "\n"
        ),
        lambda: (
            f"## Largest loss batch on one device (CLIP InfoNCE, dim {ARGS.loss_dim}, "
            f"float32; budget: {budget_note})\n\n"
            + _markdown(_guarded(loss_table, LOSS_HEADER))
            + "\n"
        ),
        lambda: (
            "## Input pipeline on this host (JPEG decode, random resized crop, flip)\n\n"
            + _markdown(_guarded(pipeline_table, PIPELINE_HEADER))
            + "\n"
        ),
        lambda: f"Took {time.perf_counter() - STARTED:.0f} s.\n",
    ]
    with open(ARGS.out, "w") as file:
        for part in parts:
            text = part() + "\n"
            print(text, flush=True)
            file.write(text)
            file.flush()


if __name__ == "__main__":
    main()
