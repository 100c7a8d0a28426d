"""Kill-during-save soak: SIGKILL the trainer at random moments, restart it, compare with a run
that was never interrupted.

    python benchmarks/kill_soak.py --trials 20 --out /tmp/soak [--steps 30] [--processes 2]

One uninterrupted run of ``configs/clip.py:tiny`` (one CPU device, a checkpoint every 3 steps,
every step logged) gives the reference losses. Then each trial starts a fresh work directory,
starts ``jaxalign train`` and SIGKILLs it at a random moment of its training, drawn (seeded: the
same moments every time) in one of two ways, alternately:

- ``step``: once step ``k`` (uniform in 1..steps) is in ``metrics.jsonl``, after a further
  delay uniform in [0, 0.5] s;
- ``save``: as soon as an orbax temporary directory (a save in progress) appears once step
  ``k`` is logged.

With ``--processes N`` every run is N processes of one CPU device each, joined by
jax.distributed (``JAXALIGN_*`` variables, as ``launch/local.sh`` sets them); a trial SIGKILLs
one of them (drawn at random) at the chosen moment, then the others at once, as a scheduler
tearing the job down would; every restart is again N processes.

It notes what the kill hit (start-up, between saves, or a save: a temporary directory left
behind) and runs the same command again until it exits 0. A trial passes when its final
``metrics.jsonl`` holds every step exactly once and every loss equals the reference's bit for
bit. Prints a Markdown table (and writes ``OUT/soak.json``); docs/reliability.md records it.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")


def _command(workdir: str, data_dir: str, steps: int) -> list[str]:
    overrides = {
        "data.data_dir": data_dir,
        "train.steps": steps,
        "train.log_every": 1,
        "train.checkpoint_every": 3,
        "train.eval_every": steps,
    }
    return [
        sys.executable,
        "-m",
        "jaxalign",
        "train",
        f"--config={ROOT}/configs/clip.py:tiny",
        f"--workdir={workdir}",
        *[f"--config.{k}={v}" for k, v in overrides.items()],
    ]


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _start(command: list[str], processes: int, **popen) -> list[subprocess.Popen]:
    """The run's processes (one CPU device each), started."""
    base = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": ""}
    if processes == 1:
        return [subprocess.Popen(command, env=base, **popen)]
    port = _free_port()
    return [
        subprocess.Popen(
            command,
            env={
                **base,
                "XLA_FLAGS": "--xla_force_host_platform_device_count=1",
                "JAXALIGN_COORDINATOR": f"127.0.0.1:{port}",
                "JAXALIGN_NUM_PROCESSES": str(processes),
                "JAXALIGN_PROCESS_ID": str(k),
            },
            **popen,
        )
        for k in range(processes)
    ]


def _losses(workdir: str) -> list[tuple[int, float]]:
    rows = []
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        for line in f:
            row = json.loads(line)
            if "loss" in row:
                rows.append((row["step"], row["loss"]))
    return rows


def _saving(workdir: str) -> bool:
    checkpoints = os.path.join(workdir, "checkpoints")
    return os.path.isdir(checkpoints) and any("tmp" in n for n in os.listdir(checkpoints))


def _logged(workdir: str) -> int:
    path = os.path.join(workdir, "metrics.jsonl")
    if not os.path.isfile(path):
        return 0
    with open(path) as f:
        return sum(1 for line in f if '"loss"' in line)


def _kill_when(
    children: list[subprocess.Popen], victim: int, workdir: str, mode: str, step: int, delay: float
) -> None:
    """Polls every 5 ms until the moment ``mode`` / ``step`` / ``delay`` names, then SIGKILLs
    ``children[victim]``, then the others."""
    child = children[victim]
    while child.poll() is None:
        if _logged(workdir) >= step:
            if mode == "save":
                while child.poll() is None and not _saving(workdir):
                    time.sleep(0.005)
            else:
                time.sleep(delay)
            break
        time.sleep(0.005)
    for process in [child] + [c for c in children if c is not child]:
        process.send_signal(signal.SIGKILL)
        process.wait()


def _run_to_the_end(command: list[str], processes: int) -> int:
    """Reruns (all processes) until every one exits 0; returns how many runs it took."""
    for attempt in range(1, 4):
        children = _start(command, processes, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True)  # fmt: skip
        errors = [c.communicate()[1] for c in children]
        if all(c.returncode == 0 for c in children):
            return attempt
        for child, error in zip(children, errors, strict=True):
            if child.returncode:
                print(error[-2000:], file=sys.stderr)
    raise RuntimeError(f"{command} did not finish in 3 attempts")


def _table(trials: list[dict]) -> str:
    """The trials as a Markdown table."""
    lines = [
        "| trial | kill | process killed first | steps logged at kill | kill hit | runs to "
        "finish | each step once | losses bit-equal |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for t in trials:
        lines.append(
            f"| {t['trial']} | {t['mode']} after step {t['after_step']} | "
            f"{t['killed_process']} | "
            f"{t['steps_logged_at_kill']} | {t['kill_hit']} | {t['restarts']} | "
            f"{t['each_step_once']} | {t['losses_bit_equal']} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="/tmp/jaxalign_soak")
    parser.add_argument("--processes", type=int, default=1, help="processes per run")
    args = parser.parse_args()
    shutil.rmtree(args.out, ignore_errors=True)
    os.makedirs(args.out)
    data_dir = os.path.expanduser("~/.cache/jaxalign/datasets")

    reference_dir = os.path.join(args.out, "reference")
    started = time.perf_counter()
    _run_to_the_end(_command(reference_dir, data_dir, args.steps), args.processes)
    wall = time.perf_counter() - started
    reference = _losses(reference_dir)
    assert [s for s, _ in reference] == list(range(1, args.steps + 1)), reference

    rng = np.random.default_rng(args.seed)
    trials = []
    for trial in range(args.trials):
        workdir = os.path.join(args.out, f"trial{trial:02d}")
        mode = ("step", "save")[trial % 2]
        step, delay = int(rng.integers(1, args.steps + 1)), float(rng.uniform(0.0, 0.5))
        victim = int(rng.integers(args.processes)) if args.processes > 1 else 0
        children = _start(
            _command(workdir, data_dir, args.steps),
            args.processes,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        _kill_when(children, victim, workdir, mode, step, delay)
        logged = _logged(workdir)
        hit = "a save" if _saving(workdir) else "start-up" if not logged else "between saves"
        if logged == args.steps and not _saving(workdir):
            hit = "the end"
        restarts = _run_to_the_end(_command(workdir, data_dir, args.steps), args.processes)
        final = _losses(workdir)
        trials.append(
            {
                "trial": trial,
                "killed_process": victim,
                "mode": mode,
                "after_step": step,
                "steps_logged_at_kill": logged,
                "kill_hit": hit,
                "restarts": restarts,
                "each_step_once": [s for s, _ in final] == list(range(1, args.steps + 1)),
                "losses_bit_equal": final == reference,
            }
        )
        print(json.dumps(trials[-1]), flush=True)

    with open(os.path.join(args.out, "soak.json"), "w") as f:
        json.dump({"reference_wall_s": round(wall, 1), "trials": trials}, f, indent=2)
    print(f"\nreference run: {args.steps} steps in {wall:.1f} s\n")
    print(_table(trials))
    passed = sum(t["each_step_once"] and t["losses_bit_equal"] for t in trials)
    print(f"\n{passed} of {len(trials)} trials passed")
    sys.exit(0 if passed == len(trials) else 1)


if __name__ == "__main__":
    main()
