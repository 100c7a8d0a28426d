"""Several processes through ``launch/local.sh`` (jax.distributed from the ``JAXALIGN_*``
variables): the tiny CLIP run as 1 process x 8 devices, 2 x 4 and 4 x 2 gives the same losses;
a SIGTERM to one of two processes stops both at one step with one checkpoint, and the restart
finishes; and the elastic matrix: checkpoint 4 of each layout, restored by each other one,
holds the saved state bit for bit, trains on the examples the uninterrupted run trained on, and
continues with its losses."""

from __future__ import annotations

import itertools
import json
import os
import shutil
import signal
import subprocess
import time

import jax
import numpy as np
import pytest

from jaxalign import config as config_lib
from jaxalign import train
from jaxalign.data import elastic
from jaxalign.train_lib.checkpoint import Checkpointer
from jaxalign.train_lib.metric_writers import read_metrics
from tests import lagging_child, restore_probe
from tests.trainer_child import (
    cache_env,
    child_interpreter,
    losses,
    saved_subtree,
    wrap_clip_stream,
)
from tests.xla_flags import with_devices

ROOT = os.path.join(os.path.dirname(__file__), "..")
CONFIG = os.path.join(ROOT, "configs", "clip.py")
LOCAL = os.path.join(ROOT, "launch", "local.sh")
STEPS, K = 8, 4  # every run's length, and the checkpoint the matrix restores
OVERRIDES = {
    "train.steps": STEPS,
    "train.log_every": 1,
    "train.checkpoint_every": K,
    "train.keep_checkpoints": 4,
    "train.eval_every": STEPS,
}
LAYOUTS = {"1x8": (1, 8), "2x4": (2, 4), "4x2": (4, 2)}  # processes x devices per process

# A hang guard for each multi-process run, not a speed bound: a 4-process run that takes 64 s
# alone took over 300 s once while the other test worker compiled beside it on 2 cores.
HANG_S = 600
LAG_S = 35  # one process's delay in the 4x2 run: more than gloo's 30 s rendezvous deadline


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# What a resumed run of the matrix leaves out: its evals (a resumed run may change them; the
# matrix checks the restored state, the examples and the losses, never an eval).
NO_EVALS = {"evals.zeroshot_split": "''", "evals.retrieval_split": "''"}


def _args(data_dir, workdir, **extra):
    values = {"data.data_dir": data_dir, **OVERRIDES, **extra}
    return [f"--config={CONFIG}:tiny", f"--workdir={workdir}",
            *[f"--config.{k}={v}" for k, v in values.items()]]  # fmt: skip


def _launch(layout, data_dir, workdir, logs, python=None, **extra) -> tuple[list[str], dict]:
    """``launch/local.sh P --devices-per-process D -- <the tiny run>`` and its environment."""
    processes, devices = LAYOUTS[layout]
    if python is None:  # the trainer, every process writing the compilation cache
        os.makedirs(logs, exist_ok=True)
        python = child_interpreter(logs, "tests.trainer_child")
    env = {**os.environ, **cache_env(), "PYTHON": python,
           "JAXALIGN_PORT": str(_free_port()), "LOG_DIR": str(logs),
           "XLA_FLAGS": with_devices()}  # fmt: skip
    command = ["bash", LOCAL, str(processes), "--devices-per-process", str(devices), "--",
               *_args(data_dir, workdir, **extra)]  # fmt: skip
    return command, env


def _checkpoints(workdir) -> list[int]:
    return sorted(int(n) for n in os.listdir(workdir / "checkpoints") if n.isdigit())


def _logged(workdir) -> int:
    path = workdir / "metrics.jsonl"
    if not path.exists():
        return 0
    return max([json.loads(line)["step"] for line in path.read_text().splitlines()] or [0])


def _config(data_dir, **extra):
    return config_lib.load(f"{CONFIG}:tiny", _args(data_dir, "x", **extra)[2:])


@pytest.fixture(scope="module")
def runs(builtin_data_dir, tmp_path_factory):
    """The matrix's three uninterrupted runs, each to step 8 with checkpoints 4 and 8 kept (and
    the 2x4 pair's preemption checkpoint):
    ``1x8`` in this process (the global batch of every step recorded), ``2x4`` stopped by a
    SIGTERM to its process 1 once step 2 is logged and restarted by the same command, ``4x2``
    straight through, its process 3 ``LAG_S`` late after compiling. Returns their work
    directories, the recorded batches, and what the stopped pair did (for the preemption
    test)."""
    base = tmp_path_factory.mktemp("layouts")
    batches: dict[int, list[str]] = {}

    def on_batch(count, next_batch):
        batch = next_batch()
        batches.setdefault(count, restore_probe.fingerprints(batch))
        return batch

    with pytest.MonkeyPatch.context() as patch:
        wrap_clip_stream(patch, on_batch)
        summary = train.train_and_evaluate(_config(builtin_data_dir), base / "1x8")

    command, env = _launch("2x4", builtin_data_dir, base / "2x4", base / "logs_2x4")
    launcher = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True, env=env)  # fmt: skip
    deadline = time.monotonic() + HANG_S
    while _logged(base / "2x4") < 2 and launcher.poll() is None:
        assert time.monotonic() < deadline, "the two processes never reached step 2"
        time.sleep(0.05)
    os.kill(int((base / "logs_2x4" / "process_1.pid").read_text()), signal.SIGTERM)
    _, stopped_err = launcher.communicate(timeout=HANG_S)
    stop = {"returncode": launcher.returncode, "stderr": stopped_err,
            "step": _logged(base / "2x4"), "checkpoints": _checkpoints(base / "2x4")}  # fmt: skip
    restart = subprocess.run(command, capture_output=True, text=True, env=env, timeout=HANG_S)
    process_1 = (base / "logs_2x4" / "process_1.log").read_text()

    # Process 3 starts its steps 35 s after the others (gloo's collectives give up at 30 s):
    # the processes meet at the coordinator's barrier first.
    lagging = lagging_child.interpreter(base, process=3, seconds=LAG_S)
    command, env = _launch("4x2", builtin_data_dir, base / "4x2", base / "logs_4x2", lagging)
    four = subprocess.run(command, capture_output=True, text=True, env=env, timeout=HANG_S)
    assert four.returncode == 0, four.stderr[-3000:]
    return {"base": base, "summary": summary, "batches": batches, "stop": stop,
            "restart": restart, "process_1_log": process_1}  # fmt: skip


def test_a_sigterm_to_one_of_two_processes_stops_both_at_one_step(runs):
    """Both processes stop at one step and save it (143); the same command resumes the pair
    and finishes; process 0 alone writes and prints."""
    stop, restart = runs["stop"], runs["restart"]
    assert stop["returncode"] == 143, stop["stderr"][-3000:] + runs["process_1_log"][-3000:]
    assert 2 <= stop["step"] < STEPS and stop["checkpoints"][-1] == stop["step"], stop
    assert restart.returncode == 0, restart.stderr[-3000:] + runs["process_1_log"][-3000:]
    assert f"resumed from checkpoint {stop['step']}" in restart.stdout
    assert "jax.distributed from env" in restart.stderr  # process 0 says how it joined
    # Process 1 prints nothing of its own: only gloo's C++ lines, whose writes may interleave.
    ours = [line for line in runs["process_1_log"].splitlines()
            if line.strip() and "Gloo" not in line and "peer ranks" not in line]  # fmt: skip
    assert not ours, ours[:20]


@pytest.mark.parametrize("layout", ["2x4", "4x2"])
def test_every_layout_trains_the_same_run(runs, layout):
    """The same losses as one process of 8 devices (1e-5) and eval figures (1e-6); one row per
    step in metrics.jsonl (process 0 alone writes it); checkpoints holding every process's data
    position."""
    workdir, one = runs["base"] / layout, runs["base"] / "1x8"
    steps = range(1, STEPS + 1)
    rows = [row["step"] for row in read_metrics(workdir) if "loss" in row]
    assert rows == list(steps), rows
    np.testing.assert_allclose([losses(workdir)[s] for s in steps],
                               [losses(one)[s] for s in steps], rtol=1e-5)  # fmt: skip
    summary = json.loads((workdir / "summary.json").read_text())
    evals = {k: v for k, v in runs["summary"].items() if k.startswith("eval/")}
    assert evals
    for key, value in evals.items():
        assert summary[key] == pytest.approx(value, abs=1e-6), key
    processes = LAYOUTS[layout][0]
    env_json = json.loads((workdir / "env.json").read_text())
    assert env_json["process_count"] == processes and env_json["device_count"] == 8
    data = json.loads((workdir / "checkpoints" / str(STEPS) / "data" / "metadata").read_text())
    assert sorted(data) == [f"process_{k}" for k in range(processes)]


PAIRS = [(a, b) for a, b in itertools.permutations(LAYOUTS, 2)]


@pytest.mark.parametrize("source, target", PAIRS, ids=[f"{a}-to-{b}" for a, b in PAIRS])
def test_elastic_resume(runs, builtin_data_dir, tmp_path, source, target, monkeypatch, capsys):
    """Checkpoint 4 of ``source`` (its later checkpoints left out) resumed under ``target``:
    every shard of the parameters and optimizer state each process holds after the restore
    equals the saved array's slice bit for bit; the examples of steps 5 to 8, put back in stream
    order (process k of P reads positions k, k + P, ...), are the uninterrupted run's, in its
    order (so the processes' shares are disjoint and cover each batch); the losses of
    steps 5 to 8 are the uninterrupted run's (1e-5)."""
    base, probe = runs["base"], tmp_path / "probe"
    probe.mkdir()
    later = [str(s) for s in _checkpoints(base / source) if s > K]
    workdir = tmp_path / "resumed"

    def later_checkpoints(directory, _):
        return later if os.path.basename(directory) == "checkpoints" else []

    shutil.copytree(base / source, workdir, ignore=later_checkpoints)
    if target == "1x8":
        monkeypatch.setattr(Checkpointer, "restore", restore_probe.recording_restore(probe))
        monkeypatch.setattr(elastic, "resume", restore_probe.recording_resume(probe))
        train.train_and_evaluate(_config(builtin_data_dir, **NO_EVALS), workdir)
        out = capsys.readouterr().out
    else:
        python = restore_probe.probe_interpreter(probe)
        logs = tmp_path / "logs"
        command, env = _launch(target, builtin_data_dir, workdir, logs, python, **NO_EVALS)
        result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=HANG_S)
        assert result.returncode == 0, result.stderr[-3000:]
        out = result.stdout
    assert f"resumed from checkpoint {K}" in out
    named = {"1x8": "1 process", "2x4": "2 processes", "4x2": "4 processes"}
    note = f"the stream saved by {named[source]} continues on this run's {named[target]}"
    assert note in out
    assert "shards restart at stream position 64" in out  # 4 steps of 16 examples

    processes = LAYOUTS[target][0]
    for part in ("params", "opt_state"):
        saved = jax.tree.leaves(saved_subtree(base / source, part, step=K))
        assert saved, part
        for k in range(processes):
            shards = restore_probe.restored_shards(probe / f"state_process_{k}.npz", part)
            assert sorted(shards) == list(range(len(saved))), (part, k)
            for leaf, pieces in shards.items():
                for index, data in pieces:
                    np.testing.assert_array_equal(data, saved[leaf][index])

    shares = [restore_probe.read_batches(probe / f"batches_process_{k}.jsonl")
              for k in range(processes)]  # fmt: skip
    for n in range(1, STEPS - K + 1):
        rows = [share[n] for share in shares]  # process k read positions k, k + P, ...
        stream = [share[j] for j in range(len(rows[0])) for share in rows]
        assert stream == runs["batches"][K + n], n

    steps = range(K + 1, STEPS + 1)
    np.testing.assert_allclose([losses(workdir)[s] for s in steps],
                               [losses(base / "1x8")[s] for s in steps], rtol=1e-5)  # fmt: skip
