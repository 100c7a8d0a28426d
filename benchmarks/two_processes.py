"""The CLIP demo as two processes against one: ``launch/local.sh 2 --devices-per-process 2``
against one process of 4 CPU devices, the same config, per-step losses compared.

    python benchmarks/two_processes.py --out /tmp/two_processes [--steps 30]

Both runs train ``configs/clip.py:demo`` for ``--steps`` steps (every step logged, the evals and
one checkpoint at the last) on the built-in data in ``~/.cache/jaxalign/datasets``. Prints each
step's losses, the largest relative difference and the first step over 1e-5, both runs' wall
time and eval figures, and the data positions each process of the pair saved (process k of 2
reads positions k, k + 2, ... of the global stream: disjoint shards). A control run, the
one-process run's HLO program compiled at another LLVM optimisation level (other rounding),
shows how far float rounding alone carries the demo's losses apart. docs/scaling.md records the
figures.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import shutil
import subprocess
import sys
import time

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")


def _train_args(workdir: str, steps: int) -> list[str]:
    values = {
        "data.data_dir": os.path.expanduser("~/.cache/jaxalign/datasets"),
        "train.steps": steps,
        "train.log_every": 1,
        "train.checkpoint_every": steps,
        "train.eval_every": steps,
    }
    return [f"--config={ROOT}/configs/clip.py:demo", f"--workdir={workdir}",
            *[f"--config.{k}={v}" for k, v in values.items()]]  # fmt: skip


def _losses(workdir: str) -> dict[int, float]:
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        rows = [json.loads(line) for line in f]
    return {r["step"]: r["loss"] for r in rows if "loss" in r}


def _run(command: list[str], env: dict[str, str]) -> float:
    started = time.perf_counter()
    result = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    if result.returncode:
        raise RuntimeError(f"{' '.join(command)} failed:\n{result.stderr[-3000:]}")
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="/tmp/jaxalign_two_processes")
    parser.add_argument("--steps", type=int, default=30)
    args = parser.parse_args()
    shutil.rmtree(args.out, ignore_errors=True)
    one, two = os.path.join(args.out, "one"), os.path.join(args.out, "two")
    base = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": ""}  # local.sh keeps XLA_FLAGS
    one_s = _run(
        [sys.executable, "-m", "jaxalign", "train", *_train_args(one, args.steps)],
        {**base, "XLA_FLAGS": "--xla_force_host_platform_device_count=4"},
    )
    two_s = _run(
        ["bash", os.path.join(ROOT, "launch", "local.sh"), "2", "--devices-per-process", "2",
         "--", *_train_args(two, args.steps)],
        {**base, "PYTHON": sys.executable, "LOG_DIR": os.path.join(args.out, "logs")},
    )  # fmt: skip
    # The control: the one-process run again, its same HLO program compiled at another LLVM
    # optimisation level of XLA's CPU backend (other vectorisation and FMA contraction).
    control = os.path.join(args.out, "one_level1")
    _run(
        [sys.executable, "-m", "jaxalign", "train", *_train_args(control, args.steps)],
        {**base, "XLA_FLAGS": "--xla_force_host_platform_device_count=4 "
         "--xla_backend_optimization_level=1"},
    )  # fmt: skip
    a, b, c = _losses(one), _losses(two), _losses(control)
    assert sorted(a) == sorted(b) == sorted(c) == list(range(1, args.steps + 1))
    print("| step | 1 process x 4 devices | 2 processes x 2 devices | 1 x 4, LLVM level 1 |")
    print("|---|---|---|---|")
    for step in a:
        print(f"| {step} | {a[step]:.6f} | {b[step]:.6f} | {c[step]:.6f} |")
    worst = max(abs(a[s] - b[s]) / abs(a[s]) for s in a)
    for name, other in (("2 x 2", b), ("1 x 4 at LLVM level 1 (control)", c)):
        rel = {s: abs(a[s] - other[s]) / abs(a[s]) for s in a}
        over = [s for s in a if rel[s] > 1e-5]
        print(
            f"\n{name} against 1 x 4: largest relative difference {max(rel.values()):.2e}; "
            f"first step over 1e-5: {over[0] if over else 'none'}"
        )
    print(f"wall: one process {one_s:.1f} s, two processes {two_s:.1f} s")
    s1, s2 = (json.loads(pathlib.Path(d, "summary.json").read_text()) for d in (one, two))
    for key in sorted(k for k in s1 if k.startswith("eval/")):
        print(f"{key}: {s1[key]:.4f} (one) {s2[key]:.4f} (two)")
    data = os.path.join(two, "checkpoints", str(args.steps), "data", "metadata")
    with open(data) as f:
        positions = json.load(f)
    for name, state in sorted(positions.items()):
        settings = state["settings"]
        print(f"{name}: process {settings['process_index']} of {settings['process_count']}, "
              f"{state['batches']} batches of {settings['per_process_batch_size']}")  # fmt: skip
    sys.exit(0 if worst <= 1e-5 else 1)


if __name__ == "__main__":
    main()
