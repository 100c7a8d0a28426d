"""How long the train step takes to compile on CPU, and how big its compiled program is.

Each repeat runs in a fresh process (nothing cached in memory, no persistent compilation cache):
the config's task and state shapes (``train.setup_run`` without its data), then the step
lowered and compiled for the task's batch shapes, as the trainer does before its first step.
Printed per repeat: lowering and compiling seconds, the compiled HLO's lines, and its scalar
``and`` instructions (the finite check's chain, which XLA copied into every leaf's update
before ``train_lib.step._all_finite`` divided once). Compiled at the tests' XLA level
(``tests/xla_flags.py``) unless ``--xla-default``; the tests compile hundreds of such steps.

    python benchmarks/step_compile.py                                  # clip.py:tiny, 8 devices
    python benchmarks/step_compile.py --spec=configs/clip.py:demo --devices=1 --xla-default
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FAST_COMPILE = "--xla_backend_optimization_level=1"  # tests/xla_flags.py's FAST_COMPILE


def measure(spec: str) -> dict:
    """In the child process: lower and compile the step once."""
    import re
    import time

    import jax

    from jaxalign import config as config_lib
    from jaxalign import train

    config = config_lib.load(spec, [])
    setup = train.setup_run(config, jax.devices(), prepare_data=False)
    start = time.perf_counter()
    lowered = setup.lower_step()
    lowered_s = time.perf_counter() - start
    start = time.perf_counter()
    program = lowered.compile().as_text()
    compile_s = time.perf_counter() - start
    return {
        "lower_s": round(lowered_s, 2),
        "compile_s": round(compile_s, 2),
        "hlo_lines": program.count("\n"),
        "scalar_ands": len(re.findall(r"= pred\[\] and\(", program)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spec", default=os.path.join(ROOT, "configs", "clip.py:tiny"))
    parser.add_argument("--devices", type=int, default=8, help="simulated CPU devices")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--xla-default", action="store_true", help="XLA's default level")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(args.spec)))
        return
    flags = [f"--xla_force_host_platform_device_count={args.devices}"]
    flags += [] if args.xla_default else [FAST_COMPILE]
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": " ".join(flags)}
    env.pop("JAX_COMPILATION_CACHE_DIR", None)
    command = [sys.executable, os.path.abspath(__file__), f"--spec={args.spec}", "--child"]
    print(f"{args.spec}, {args.devices} CPU devices, XLA flags {env['XLA_FLAGS']!r}, "
          f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores")  # fmt: skip
    print("| repeat | lower s | compile s | compiled HLO lines | scalar `and`s |")
    print("|---|---|---|---|---|")
    for repeat in range(1, args.repeats + 1):
        result = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
        if result.returncode != 0:
            raise SystemExit(result.stderr[-3000:])
        row = json.loads(result.stdout.strip().splitlines()[-1])
        print(f"| {repeat} | {row['lower_s']} | {row['compile_s']} | {row['hlo_lines']:,} | "
              f"{row['scalar_ands']:,} |")  # fmt: skip


if __name__ == "__main__":
    main()
