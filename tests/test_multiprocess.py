"""Several processes through ``launch/local.sh``: two processes of 4 CPU devices (jax.distributed
from the ``JAXALIGN_*`` variables) against one process of 8 devices; a SIGTERM to one process
stopping both at one step with one checkpoint; the restart; and an elastic resume of their
checkpoint by one process."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from jaxalign import config as config_lib
from jaxalign import train
from jaxalign.train_lib.checkpoint import Checkpointer
from tests.trainer_child import losses, saved_subtree

ROOT = os.path.join(os.path.dirname(__file__), "..")
CONFIG = os.path.join(ROOT, "configs", "clip.py")
STEPS = 8
OVERRIDES = {
    "train.steps": STEPS,
    "train.log_every": 1,
    "train.checkpoint_every": 4,
    "train.keep_checkpoints": 4,
    "train.eval_every": STEPS,
}

pytestmark = pytest.mark.usefixtures("shared_compilation_cache")  # tests/conftest.py


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _args(data_dir, workdir):
    values = {"data.data_dir": data_dir, **OVERRIDES}
    return [f"--config={CONFIG}:tiny", f"--workdir={workdir}",
            *[f"--config.{k}={v}" for k, v in values.items()]]  # fmt: skip


def _checkpoints(workdir) -> list[int]:
    return sorted(int(n) for n in os.listdir(workdir / "checkpoints") if n.isdigit())


def _logged(workdir) -> int:
    path = workdir / "metrics.jsonl"
    if not path.exists():
        return 0
    return max([json.loads(line)["step"] for line in path.read_text().splitlines()] or [0])


def test_two_processes_equal_one(builtin_data_dir, tmp_path, capsys):
    """Two processes of 4 devices (``launch/local.sh 2 --devices-per-process 4``), stopped by
    a SIGTERM to process 1 and restarted, train the run of one process of 8 devices: the same
    losses (1e-5) and eval figures, one set of files written by process 0 alone, checkpoints
    holding both processes' data positions; their checkpoint 4, restored by one process of 8
    devices, holds the saved state bit for bit and continues with the same losses."""
    two = tmp_path / "two"
    env = {**os.environ, "PYTHON": sys.executable, "JAXALIGN_PORT": str(_free_port()),
           "LOG_DIR": str(tmp_path / "logs")}  # fmt: skip
    command = ["bash", os.path.join(ROOT, "launch", "local.sh"), "2", "--devices-per-process",
               "4", "--", *_args(builtin_data_dir, two)]  # fmt: skip
    # A SIGTERM to process 1 alone, once step 2 is logged: both stop at one step and save it.
    launcher = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                env=env)  # fmt: skip
    deadline = time.monotonic() + 240
    while _logged(two) < 2 and launcher.poll() is None:
        assert time.monotonic() < deadline, "the two processes never reached step 2"
        time.sleep(0.05)
    os.kill(int((tmp_path / "logs" / "process_1.pid").read_text()), signal.SIGTERM)
    _, err = launcher.communicate(timeout=240)
    second = (tmp_path / "logs" / "process_1.log").read_text()
    assert launcher.returncode == 143, err[-3000:] + second[-3000:]
    stopped = _logged(two)
    assert 2 <= stopped < STEPS and _checkpoints(two)[-1] == stopped, (stopped, _checkpoints(two))
    # The same command resumes the pair and finishes.
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    second = (tmp_path / "logs" / "process_1.log").read_text()
    assert result.returncode == 0, result.stderr[-3000:] + second[-3000:]
    assert f"resumed from checkpoint {stopped}" in result.stdout
    assert "jax.distributed from env" in result.stderr  # process 0 says how it joined
    # Process 1 prints nothing of its own: only gloo's C++ lines, whose writes may interleave.
    ours = [line for line in second.splitlines()
            if line.strip() and "Gloo" not in line and "peer ranks" not in line]  # fmt: skip
    assert not ours, ours[:20]

    config = config_lib.load(f"{CONFIG}:tiny", _args(builtin_data_dir, "x")[2:])
    one = train.train_and_evaluate(config, tmp_path / "one")
    steps = range(1, STEPS + 1)
    np.testing.assert_allclose([losses(two)[s] for s in steps],
                               [losses(tmp_path / "one")[s] for s in steps], rtol=1e-5)  # fmt: skip
    summary = json.loads((two / "summary.json").read_text())
    for key, value in one.items():
        if key.startswith("eval/"):
            assert summary[key] == pytest.approx(value, abs=1e-6), key
    env_json = json.loads((two / "env.json").read_text())
    assert env_json["process_count"] == 2 and env_json["device_count"] == 8
    data = json.loads((two / "checkpoints" / str(STEPS) / "data" / "metadata").read_text())
    assert sorted(data) == ["process_0", "process_1"]

    # Elastic: checkpoint 4 of the two processes, restored by one process of 8 devices.
    checkpointer = Checkpointer(str(two / "checkpoints"), keep=1, read_only=True)
    try:
        abstract = train._setup(config, jax.devices()).abstract_state
        restored, positions, _, _ = checkpointer.restore(abstract, step=4)
    finally:
        checkpointer.close()
    assert sorted(positions) == ["process_0", "process_1"]
    for part in ("params", "opt_state"):
        saved = jax.tree.leaves(saved_subtree(two, part, step=4))
        ours = jax.tree.leaves(jax.device_get(getattr(restored, part)))
        assert len(ours) == len(saved) > 0
        for a, b in zip(ours, saved, strict=True):
            np.testing.assert_array_equal(a, b)
    later = [str(s) for s in _checkpoints(two) if s > 4]
    shutil.copytree(two, tmp_path / "elastic", ignore=shutil.ignore_patterns(*later))
    capsys.readouterr()
    train.train_and_evaluate(config, tmp_path / "elastic")
    log = capsys.readouterr().out
    assert "the checkpoint's 2 processes' streams continue" in log
    assert "shards restart at stream position 64" in log  # 4 steps of 16
    np.testing.assert_allclose([losses(tmp_path / "elastic")[s] for s in range(5, STEPS + 1)],
                               [losses(tmp_path / "one")[s] for s in range(5, STEPS + 1)],
                               rtol=1e-5)  # fmt: skip
