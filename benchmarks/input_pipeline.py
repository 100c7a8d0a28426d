"""Input pipeline throughput: JPEG decode + random resized crop to 224 + flip, per process.

Writes ``--num-images`` JPEGs (random sizes, each side 256..320 px, smooth content, quality 90)
into webdataset tar shards in a temporary directory, then measures in one run:

- our pipeline (``jaxalign.data.make_pipeline`` over ``WebDatasetSource`` with
  ``ImageTransform(224, train=True, flip=True, normalize=False)``, batches of ``--batch``) with
  ``worker_count`` 0 (in-process, on 1 and on the default 4 read threads), 1 and 2;
- a reference loop over the same shards: the ``webdataset`` library reading the tars in order,
  PIL decoding, the same random resized crop box, bicubic resize, flip, ``np.stack`` to batches,
  in one process and one thread.

Each measurement pulls a few warm-up batches (worker start-up excluded), then times
``--epochs`` passes' worth of batches. CPU time (user + system) of this process and its worker
processes over the same window gives the cores used. Prints a markdown table: images/s, CPU cores
used, images/s per core used, and the ratio of images/s to the reference.

    python benchmarks/input_pipeline.py
    python benchmarks/input_pipeline.py --num-images 2048 --workers 0,1,2,4
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import platform
import tarfile
import tempfile
import time
from collections.abc import Iterator

import numpy as np
from PIL import Image


def _parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num-images", type=int, default=512)
    parser.add_argument("--shards", type=int, default=4)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--epochs", type=float, default=2.0, help="timed passes over the data")
    parser.add_argument("--warmup-batches", type=int, default=3)
    parser.add_argument("--workers", default="0,1,2", help="worker_count values to measure")
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args()


def write_shards(directory: str, num_images: int, num_shards: int, seed: int) -> list[str]:
    """``num_images`` JPEG + caption samples in ``num_shards`` tars; returns the shard paths."""
    rng = np.random.default_rng(seed)
    paths = [os.path.join(directory, f"bench-{s:06d}.tar") for s in range(num_shards)]
    with contextlib.ExitStack() as stack:
        tars = [stack.enter_context(tarfile.open(p, "w")) for p in paths]
        for i in range(num_images):
            _add_image(tars[i % num_shards], i, rng)
    return paths


def _add_image(tar: tarfile.TarFile, i: int, rng: np.random.Generator) -> None:
    """Writes sample ``i``: a smooth random JPEG (sides 256..320) and a caption."""
    width, height = (int(v) for v in rng.integers(256, 321, size=2))
    coarse = rng.integers(0, 256, (6, 6, 3), dtype=np.uint8)
    image = Image.fromarray(coarse).resize((width, height), Image.Resampling.BICUBIC)
    noisy = np.asarray(image, np.int16) + rng.integers(-12, 13, (height, width, 3))
    buffer = io.BytesIO()
    Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8)).save(buffer, "JPEG", quality=90)
    for ext, data in (("jpg", buffer.getvalue()), ("txt", f"image {i}".encode())):
        info = tarfile.TarInfo(f"{i:08d}.{ext}")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))


def _cpu_seconds() -> float:
    """User + system CPU seconds of this process and its live children (worker processes)."""
    try:
        import psutil
    except ImportError:  # this process only
        times = os.times()
        return times.user + times.system
    me = psutil.Process()
    total = sum(me.cpu_times()[:2])
    for child in me.children(recursive=True):
        with contextlib.suppress(psutil.Error):  # a worker that just exited
            total += sum(child.cpu_times()[:2])
    return total


def measure(batches: Iterator[dict], batch: int, warmup: int, timed: int) -> dict[str, float]:
    """Images/s and CPU cores used over ``timed`` batches after ``warmup`` ones."""
    for _ in range(warmup):
        next(batches)
    cpu0, wall0 = _cpu_seconds(), time.perf_counter()
    for _ in range(timed):
        out = next(batches)
        assert out["image"].shape[0] == batch
    wall = time.perf_counter() - wall0
    cpu = _cpu_seconds() - cpu0
    return {"images_per_s": timed * batch / wall, "cores": cpu / wall}


def reference_batches(shards: list[str], size: int, batch: int, seed: int) -> Iterator[dict]:
    """webdataset + PIL in one process: decode, random resized crop, flip, stack; forever."""
    import webdataset as wds

    from jaxalign.data.transforms import random_resized_crop_box

    rng = np.random.default_rng(seed)
    images: list[np.ndarray] = []
    while True:
        for sample in wds.WebDataset(shards, shardshuffle=False, empty_check=False):
            image = Image.open(io.BytesIO(sample["jpg"])).convert("RGB")
            box = random_resized_crop_box(image.width, image.height, rng)
            image = image.resize((size, size), Image.Resampling.BICUBIC, box=box)
            if rng.uniform() < 0.5:
                image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
            images.append(np.asarray(image))
            if len(images) == batch:
                yield {"image": np.stack(images)}
                images = []


def our_batches(shards: list[str], size: int, batch: int, workers: int, threads: int | None):
    """``make_pipeline`` over the shards; returns (iterator, close)."""
    import grain

    from jaxalign.data import ImageTransform, WebDatasetSource, make_pipeline

    pipeline = make_pipeline(
        WebDatasetSource(shards),
        seed=0,
        global_batch_size=batch,
        transform=ImageTransform(size, train=True, flip=True, normalize=False),
        process_index=0,
        process_count=1,
        worker_count=workers,
        read_options=None if threads is None else grain.ReadOptions(num_threads=threads),
    )
    iterator = iter(pipeline)
    return iterator, iterator.close


def main() -> None:
    args = _parse()
    timed = max(1, round(args.epochs * args.num_images / args.batch))
    rows: list[tuple[str, str, str, dict[str, float]]] = []
    with tempfile.TemporaryDirectory() as directory:
        shards = write_shards(directory, args.num_images, args.shards, args.seed)
        megabytes = sum(os.path.getsize(p) for p in shards) / 2**20
        reference = measure(
            reference_batches(shards, args.image_size, args.batch, args.seed),
            args.batch,
            args.warmup_batches,
            timed,
        )
        rows.append(("reference: webdataset + PIL loop", "-", "1", reference))
        configs: list[tuple[int, int | None]] = []
        for workers in (int(w) for w in args.workers.split(",")):
            configs += [(0, 1), (0, None)] if workers == 0 else [(workers, None)]
        for workers, threads in configs:
            iterator, close = our_batches(shards, args.image_size, args.batch, workers, threads)
            try:
                result = measure(iterator, args.batch, args.warmup_batches, timed)
            finally:
                close()
            label = "jaxalign make_pipeline" + (" (in-process)" if workers == 0 else "")
            rows.append((label, str(workers), "4 (default)" if threads is None else "1", result))

    print(
        f"\n{args.num_images} JPEGs (sides 256..320 px, {megabytes:.1f} MiB in {args.shards} "
        f"shards) -> random resized crop {args.image_size} + flip, batches of {args.batch}; "
        f"{timed} batches timed after {args.warmup_batches} warm-up; "
        f"{os.cpu_count()} CPUs, {platform.processor() or platform.machine()}, "
        f"Pillow {Image.__version__}\n"
    )
    print(
        "| pipeline | worker_count | read threads / process | images/s | CPU cores used "
        "| images/s per core | vs reference |"
    )
    print("|---|---|---|---|---|---|---|")
    base = reference["images_per_s"]
    for label, workers, threads, r in rows:
        per_core = r["images_per_s"] / max(r["cores"], 1e-9)
        print(
            f"| {label} | {workers} | {threads} | {r['images_per_s']:.0f} | {r['cores']:.2f} "
            f"| {per_core:.0f} | {r['images_per_s'] / base:.2f}x |"
        )


if __name__ == "__main__":
    main()
