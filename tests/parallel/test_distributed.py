"""How a process finds its place in a multi-process job (``parallel.distributed.resolve``):
flags, then JAXALIGN_* variables, then SLURM, then JAX's own detection on request; partial or
malformed descriptions are refused naming the flag or variable."""

from __future__ import annotations

import pytest

from jaxalign.errors import ConfigError
from jaxalign.parallel.distributed import Launch, describe, resolve

SLURM = dict(SLURM_JOB_ID="77", SLURM_NTASKS="4", SLURM_PROCID="3", SLURM_LOCALID="1",
             SLURM_STEP_NODELIST="gpu[001-002]")  # fmt: skip
OURS = dict(JAXALIGN_COORDINATOR="10.0.0.1:8476", JAXALIGN_NUM_PROCESSES="4",
            JAXALIGN_PROCESS_ID="2")  # fmt: skip


def test_nothing_set_is_one_process_and_auto_asks_jax():
    assert resolve({}) == Launch("single")
    assert resolve({}, auto=True) == Launch("auto")
    assert resolve({}, auto=True).kwargs() == {}
    assert describe(resolve({})) == "one process"


def test_our_variables():
    launch = resolve({**OURS, "JAXALIGN_LOCAL_DEVICE_IDS": "4,5"})
    assert launch == Launch("env", "10.0.0.1:8476", 4, 2, (4, 5))
    assert launch.kwargs() == {
        "coordinator_address": "10.0.0.1:8476",
        "num_processes": 4,
        "process_id": 2,
        "local_device_ids": [4, 5],
    }
    assert "jax.distributed from env" in describe(launch)


def test_flags_come_before_variables_and_slurm():
    launch = resolve({**OURS, **SLURM}, coordinator="h:1", num_processes=2, process_id=1)
    assert launch == Launch("flags", "h:1", 2, 1, None)
    assert resolve({**OURS, **SLURM}).source == "env"


@pytest.mark.parametrize(
    "tasks, gpus, local, expected",
    [
        ("1", "8", "0", tuple(range(8))),  # one process per node: every GPU
        ("8", "8", "5", (5,)),  # one per GPU
        ("2", "8", "1", (4, 5, 6, 7)),  # two per node: half each
        (None, None, "1", (1,)),  # unknown: JAX's own rule
    ],
)
def test_slurm_local_devices_follow_the_tasks_per_node(tasks, gpus, local, expected):
    env = {**SLURM, "SLURM_LOCALID": local}
    if tasks:
        env["SLURM_NTASKS_PER_NODE"] = tasks
    if gpus:
        env["SLURM_GPUS_ON_NODE"] = gpus
    launch = resolve(env)
    assert launch.source == "slurm" and launch.local_device_ids == expected
    assert launch.coordinator is None and launch.process_id is None  # JAX reads them


def test_slurm_tasks_per_node_from_the_compact_form():
    env = {**SLURM, "SLURM_TASKS_PER_NODE": "2(x2)", "SLURM_GPUS_ON_NODE": "4"}
    assert resolve(env).local_device_ids == (2, 3)


def test_one_slurm_task_is_one_process():
    assert resolve({**SLURM, "SLURM_NTASKS": "1"}) == Launch("single")


@pytest.mark.parametrize(
    "env, flags, message",
    [
        ({"JAXALIGN_NUM_PROCESSES": "2"}, {}, "JAXALIGN_NUM_PROCESSES given without "
         "JAXALIGN_COORDINATOR, JAXALIGN_PROCESS_ID"),
        ({**OURS, "JAXALIGN_COORDINATOR": "nohost"}, {}, "JAXALIGN_COORDINATOR='nohost': "
         "expected HOST:PORT"),
        ({**OURS, "JAXALIGN_PROCESS_ID": "4"}, {}, "JAXALIGN_PROCESS_ID=4: must be below "
         "JAXALIGN_NUM_PROCESSES=4"),
        ({**OURS, "JAXALIGN_NUM_PROCESSES": "two"}, {}, "JAXALIGN_NUM_PROCESSES='two': not an"),
        ({**OURS, "JAXALIGN_LOCAL_DEVICE_IDS": "0,-1"}, {}, "JAXALIGN_LOCAL_DEVICE_IDS=-1"),
        ({}, {"process_id": "0"}, "--process-id given without --coordinator, --num-processes"),
        ({**SLURM, "SLURM_NTASKS_PER_NODE": "3", "SLURM_GPUS_ON_NODE": "8"}, {},
         "SLURM_GPUS_ON_NODE=8 is not a multiple of the 3 tasks per node"),
    ],
)  # fmt: skip
def test_bad_descriptions_name_the_variable(env, flags, message):
    with pytest.raises(ConfigError) as error:
        resolve(env, **flags)
    assert message in str(error.value)


def test_the_train_command_refuses_a_bad_description(monkeypatch, capsys, tmp_path):
    from jaxalign import cli

    monkeypatch.setenv("JAXALIGN_NUM_PROCESSES", "2")
    args = ["train", "--config=configs/clip.py:tiny", f"--workdir={tmp_path}"]
    assert cli.main(args) == 2
    assert "JAXALIGN_NUM_PROCESSES given without JAXALIGN_COORDINATOR" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())  # nothing started
