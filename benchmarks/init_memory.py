"""Initialisation time and peak host memory against the global batch size.

For each global batch size, a fresh process (one CPU device) runs what the trainer runs before
its first step: the CLIP task of ``configs/clip.py:demo`` at ``--image-size`` px, its state's
abstract shapes and shardings (``jax.eval_shape``) and the sharded initialisation. The time is
measured from just before the task is built (the dataset already on disk) to the initialised
state on the device; the peak is the process's maximum resident set size
(``resource.getrusage``), imports included. ``--from-zeros-batch`` measures instead what the
trainer did before the task protocol: the model initialised on a zeros batch of the full global
batch size, closed over by the jitted init (so the batch becomes a constant of the program).

    python benchmarks/init_memory.py                       # batches 128 and 16384, 128 px
    python benchmarks/init_memory.py --from-zeros-batch    # the old way, for comparison
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def measure(batch: int, image_size: int, data_dir: str, from_zeros_batch: bool) -> dict:
    """Runs in the child process: init once, report seconds and peak RSS."""
    import resource
    import time

    import jax
    import numpy as np

    from jaxalign import config as config_lib
    from jaxalign import train
    from jaxalign.parallel.sharding import sharded_init
    from jaxalign.train_lib import TrainState

    config = config_lib.load(
        os.path.join(ROOT, "configs", "clip.py:demo"),
        [
            f"train.global_batch_size={batch}",
            f"data.image_size={image_size}",
            f"data.data_dir={data_dir}",
            "evals.zeroshot_split=''",
            "evals.retrieval_split=''",
        ],
    )
    devices = jax.devices()
    config_lib.validate(config, len(devices))
    started = time.perf_counter()
    setup = train.setup_run(config, devices)
    if from_zeros_batch:
        task, tx = setup.task, setup.tx
        zeros = {k: np.zeros(s.shape, s.dtype) for k, s in task.batch_spec().items()}

        def init_state(rng):  # the model's init on the whole global batch, closed over
            variables = task.model.init(rng, zeros["image"], zeros["ids"], zeros["mask"] + 1)
            return TrainState.create(variables, tx)

        state, _ = sharded_init(init_state, setup.mesh, setup.rng)
    else:
        state, _ = sharded_init(
            setup.init_state, setup.mesh, setup.rng, shardings=setup.state_shardings
        )
    jax.block_until_ready(state)
    seconds = time.perf_counter() - started
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"batch": batch, "seconds": seconds, "peak_gib": peak_kib / 2**20}


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            names = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
        return names[0] if names else platform.machine()
    except OSError:
        return platform.machine()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", default="128,16384")
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--from-zeros-batch", action="store_true")
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--data-dir", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child is not None:
        result = measure(args.child, args.image_size, args.data_dir, args.from_zeros_batch)
        print(json.dumps(result))
        return

    from jaxalign.data import builtin

    with tempfile.TemporaryDirectory() as data_dir:
        builtin.prepare("shapes_captions", data_dir)
        builtin.build_caption_tokenizer(data_dir)
        rows = []
        for batch in (int(b) for b in args.batches.split(",")):
            command = [sys.executable, __file__, f"--child={batch}", f"--data-dir={data_dir}"]
            command += [f"--image-size={args.image_size}"]
            command += ["--from-zeros-batch"] if args.from_zeros_batch else []
            env = {**os.environ, "JAX_PLATFORMS": "cpu"}
            out = subprocess.run(command, capture_output=True, text=True, env=env, check=True)
            rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    how = "zeros batch of the global size (before)" if args.from_zeros_batch else "task protocol"
    print(f"init of configs/clip.py:demo at {args.image_size} px, 1 CPU device, {how}")
    print(f"machine: {_cpu_name()}, {os.cpu_count()} cores\n")
    print("| global batch | init time | peak RSS |")
    print("|---|---|---|")
    for row in rows:
        print(f"| {row['batch']} | {row['seconds']:.2f} s | {row['peak_gib']:.2f} GiB |")
    low, high = rows[0], rows[-1]
    print(
        f"\nratio {high['batch']} / {low['batch']}: time {high['seconds'] / low['seconds']:.3f}, "
        f"peak RSS {high['peak_gib'] / low['peak_gib']:.3f}"
    )


if __name__ == "__main__":
    main()
