"""Per-device memory and time of the contrastive losses' loss + gradient, by implementation.

Prints three markdown tables:

1. global batch 2^12 ... 2^18 on 8 devices: compiled temporary memory per device
   (``memory_analysis().temp_size_in_bytes`` of the jitted loss + gradient) and, up to
   ``--time-max-log2``, the measured wall time of one loss + gradient (median of repeats);
2. the largest global batch (a power of two) whose loss + gradient fits a per-device budget
   (temp + arguments + outputs, by memory analysis; nothing is allocated);
3. at a fixed local batch, the per-device temporary memory as the device count goes 1, 2, 4, 8,
   for each tile of ``--local-tiles`` (the ring's step from 1 to 2 devices is its double-buffered
   hop, ``2 x tile x dim``, so the tile sets it).

Memory comes from compiling against abstract inputs (``jax.ShapeDtypeStruct``), so any size can
be measured on a small machine; the compiled program is the per-device SPMD program.

    python benchmarks/loss_memory.py                       # CPU, 8 simulated devices
    python benchmarks/loss_memory.py --loss siglip
    python benchmarks/loss_memory.py --devices 0           # the real devices (e.g. one GPU)
"""

from __future__ import annotations

import argparse
import os
import sys


def _parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--loss", choices=["clip", "siglip"], default="clip")
    parser.add_argument("--impls", default="naive,tiled,ring")
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--tile", type=int, default=1024)
    parser.add_argument("--min-log2", type=int, default=12)
    parser.add_argument("--max-log2", type=int, default=18)
    parser.add_argument("--time-max-log2", type=int, default=14, help="time sizes up to this")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--budget-gib", type=float, default=16.0)
    parser.add_argument("--search-max-log2", type=int, default=26)
    parser.add_argument("--local-log2", type=int, default=11, help="fixed local batch (table 3)")
    parser.add_argument("--local-tiles", default="1024,256,64", help="tiles for table 3")
    parser.add_argument(
        "--devices",
        type=int,
        default=8,
        help="simulated CPU devices; 0 uses the machine's own devices",
    )
    parser.add_argument("--dtype", default="float32")
    return parser.parse_args()


ARGS = _parse()
if ARGS.devices:
    os.environ["JAX_PLATFORMS"] = "cpu"
    os.environ["XLA_FLAGS"] = (
        os.environ.get("XLA_FLAGS", "") + f" --xla_force_host_platform_device_count={ARGS.devices}"
    )

import statistics  # noqa: E402
import time  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from jaxalign import objectives  # noqa: E402
from jaxalign.parallel import batch_sharding, make_mesh  # noqa: E402

GIB = 2**30


def _loss_and_grad(impl: str, mesh, tile: int):
    def loss(image, text, scale, bias):
        if ARGS.loss == "clip":
            return objectives.clip_loss(image, text, scale, mesh=mesh, impl=impl, tile=tile)
        return objectives.siglip_loss(image, text, scale, bias, mesh=mesh, impl=impl, tile=tile)

    return jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2, 3)))


def _compile(impl: str, batch: int, devices: int, tile: int = ARGS.tile):
    mesh = make_mesh({"data": devices}, devices=jax.devices()[:devices])
    emb = jax.ShapeDtypeStruct(
        (batch, ARGS.dim), jnp.dtype(ARGS.dtype), sharding=batch_sharding(mesh)
    )
    scalar = jax.ShapeDtypeStruct((), jnp.float32)
    fn = _loss_and_grad(impl, mesh, tile)
    return fn, mesh, fn.lower(emb, emb, scalar, scalar).compile()


def _memory(compiled) -> tuple[int, int]:
    """(temporary bytes, temporary + argument + output bytes) per device."""
    stats = compiled.memory_analysis()
    temp = stats.temp_size_in_bytes
    return temp, temp + stats.argument_size_in_bytes + stats.output_size_in_bytes


def _time(fn, mesh, batch: int) -> float:
    rng = np.random.default_rng(0)
    image, text = rng.normal(size=(2, batch, ARGS.dim)).astype(np.float32)
    image /= np.linalg.norm(image, axis=1, keepdims=True)
    text /= np.linalg.norm(text, axis=1, keepdims=True)
    image, text = (
        jax.device_put(jnp.asarray(x, ARGS.dtype), batch_sharding(mesh)) for x in (image, text)
    )
    scale, bias = jnp.float32(np.log(10.0)), jnp.float32(-10.0)
    jax.block_until_ready(fn(image, text, scale, bias))  # warm up
    times = []
    for _ in range(ARGS.repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn(image, text, scale, bias))
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _fmt_bytes(n: float) -> str:
    return f"{n / 2**20:,.1f} MiB" if n < GIB else f"{n / GIB:,.2f} GiB"


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def main() -> None:
    impls = ARGS.impls.split(",")
    count = ARGS.devices or jax.device_count()
    print(
        f"# loss_memory: {ARGS.loss} loss + gradient, dim {ARGS.dim}, tile {ARGS.tile}, "
        f"{ARGS.dtype}, {count} x {jax.devices()[0].device_kind} ({jax.default_backend()}), "
        f"jax {jax.__version__}"
    )

    print(f"\n## Per-device temporary memory and time, {count} devices\n")
    print("| global batch | " + " | ".join(f"{i} temp | {i} time" for i in impls) + " |")
    print("|---|" + "---|---|" * len(impls))
    for log2 in range(ARGS.min_log2, ARGS.max_log2 + 1):
        batch = 2**log2
        cells = []
        for impl in impls:
            _log(f"compiling {impl} at 2^{log2}")
            fn, mesh, compiled = _compile(impl, batch, count)
            temp, _ = _memory(compiled)
            seconds = "-"
            if log2 <= ARGS.time_max_log2:
                _log(f"timing {impl} at 2^{log2}")
                seconds = f"{_time(fn, mesh, batch):.3f} s"
            cells += [_fmt_bytes(temp), seconds]
        print(f"| 2^{log2} | " + " | ".join(cells) + " |", flush=True)

    print(
        f"\n## Largest global batch within {ARGS.budget_gib:g} GiB per device "
        f"(temp + args + outputs), {count} devices\n"
    )
    print("| impl | largest global batch | its per-device total | ratio to naive |")
    print("|---|---|---|---|")
    largest = {}
    for impl in impls:
        best = None
        for log2 in range(ARGS.min_log2, ARGS.search_max_log2 + 1):
            _log(f"budget search {impl} at 2^{log2}")
            _, _, compiled = _compile(impl, 2**log2, count)
            _, total = _memory(compiled)
            if total > ARGS.budget_gib * GIB:
                break
            best = (log2, total)
        largest[impl] = best
        if best is None:
            print(f"| {impl} | none from 2^{ARGS.min_log2} | - | - |")
            continue
        capped = " (search cap)" if best[0] == ARGS.search_max_log2 else ""
        ratio = ""
        if largest.get("naive"):
            ratio = f"{2 ** (best[0] - largest['naive'][0])}x"
        print(f"| {impl} | 2^{best[0]}{capped} | {_fmt_bytes(best[1])} | {ratio} |", flush=True)

    local = 2**ARGS.local_log2
    counts = [n for n in (1, 2, 4, 8) if n <= count]
    print(f"\n## Per-device temporary memory at a fixed local batch of 2^{ARGS.local_log2}\n")
    print("| impl | tile | " + " | ".join(f"{n} devices" for n in counts) + " | max / min |")
    print("|---|---|" + "---|" * (len(counts) + 1))
    for tile in (int(t) for t in ARGS.local_tiles.split(",")):
        for impl in impls:
            temps = []
            for n in counts:
                _log(f"compiling {impl} tile {tile} at local 2^{ARGS.local_log2} on {n} devices")
                temps.append(_memory(_compile(impl, local * n, n, tile)[2])[0])
            spread = max(temps) / min(temps)
            cells = " | ".join(_fmt_bytes(t) for t in temps)
            print(f"| {impl} | {tile} | {cells} | {spread:.3f} |", flush=True)


if __name__ == "__main__":
    main()
