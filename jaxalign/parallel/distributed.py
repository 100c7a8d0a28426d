"""Starting JAX's multi-controller runtime (``jax.distributed``) from how the job was launched.

Every process of a multi-host job runs the same ``jaxalign train`` command; before any jax
computation, ``initialize(resolve(os.environ, ...))`` connects them. ``resolve`` reads, first
match wins:

1. explicit values (``jaxalign train --coordinator HOST:PORT --num-processes N --process-id K
   [--local-device-ids 0,1]``);
2. ``JAXALIGN_COORDINATOR``, ``JAXALIGN_NUM_PROCESSES``, ``JAXALIGN_PROCESS_ID`` (all three,
   or none) and optionally ``JAXALIGN_LOCAL_DEVICE_IDS``: what ``launch/local.sh`` and the
   Kubernetes JobSet in ``launch/gke/`` set;
3. SLURM with more than one task (``SLURM_JOB_ID``, ``SLURM_NTASKS`` > 1, ``SLURM_PROCID``,
   ``SLURM_LOCALID``, ``SLURM_STEP_NODELIST``): JAX finds the coordinator (the first node of
   the step), the count and the index; the local devices follow the tasks per node: one task
   per node sees every GPU of the node (``SLURM_GPUS_ON_NODE``), one task per GPU sees GPU
   ``SLURM_LOCALID``, and k tasks on g GPUs see ``g / k`` consecutive GPUs each (JAX alone
   would give a single-task node only its first GPU);
4. ``auto=True`` (``--distributed``): ``jax.distributed.initialize()`` with nothing, for the
   environments JAX detects itself (Cloud TPU pods, Open MPI);
5. otherwise one process: nothing to initialise.

A partial or malformed description (a count without a coordinator, a process id out of range,
a port that is not a number) is a ``ConfigError`` naming the variable or flag.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping, Sequence

from jaxalign.errors import ConfigError

ENV_VARS = ("JAXALIGN_COORDINATOR", "JAXALIGN_NUM_PROCESSES", "JAXALIGN_PROCESS_ID")
SLURM_VARS = ("SLURM_JOB_ID", "SLURM_NTASKS", "SLURM_PROCID", "SLURM_LOCALID",
              "SLURM_STEP_NODELIST")  # fmt: skip


@dataclasses.dataclass(frozen=True)
class Launch:
    """How this process joins the job: ``source`` is "single" (no initialisation),
    "flags", "env", "slurm" or "auto"; None fields are left to JAX's own detection."""

    source: str
    coordinator: str | None = None
    num_processes: int | None = None
    process_id: int | None = None
    local_device_ids: tuple[int, ...] | None = None

    def kwargs(self) -> dict:
        """The arguments of ``jax.distributed.initialize`` (the None ones left out)."""
        names = ("coordinator", "num_processes", "process_id", "local_device_ids")
        keys = ("coordinator_address", "num_processes", "process_id", "local_device_ids")
        values = {k: getattr(self, n) for k, n in zip(keys, names, strict=True)}
        if values["local_device_ids"] is not None:
            values["local_device_ids"] = list(values["local_device_ids"])
        return {k: v for k, v in values.items() if v is not None}


def _int(value: str | int, name: str, minimum: int) -> int:
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{name}={value!r}: not an integer") from None
    if number < minimum:
        raise ConfigError(f"{name}={number}: must be >= {minimum}")
    return number


def _device_ids(value: str | Sequence[int] | None, name: str) -> tuple[int, ...] | None:
    if value is None or value == "":
        return None
    parts = value.split(",") if isinstance(value, str) else list(value)
    return tuple(_int(p, name, 0) for p in parts)


def _explicit(
    coordinator: str | None,
    num_processes: str | int | None,
    process_id: str | int | None,
    local_device_ids: str | Sequence[int] | None,
    names: tuple[str, str, str, str],
    source: str,
) -> Launch:
    values = (coordinator, num_processes, process_id)
    missing = [n for n, v in zip(names, values, strict=False) if v in (None, "")]
    if missing:
        given = [n for n, v in zip(names, values, strict=False) if v not in (None, "")]
        raise ConfigError(f"{', '.join(given)} given without {', '.join(missing)}: set all three")
    if not re.fullmatch(r"[^\s:]+:\d{1,5}", str(coordinator)):
        raise ConfigError(f"{names[0]}={coordinator!r}: expected HOST:PORT")
    count = _int(num_processes, names[1], 1)
    index = _int(process_id, names[2], 0)
    if index >= count:
        raise ConfigError(f"{names[2]}={index}: must be below {names[1]}={count}")
    return Launch(source, str(coordinator), count, index, _device_ids(local_device_ids, names[3]))


def _tasks_per_node(env: Mapping[str, str]) -> int | None:
    """SLURM's tasks on this node (``SLURM_NTASKS_PER_NODE``, else the first count of
    ``SLURM_TASKS_PER_NODE``, e.g. "2(x4)")."""
    if env.get("SLURM_NTASKS_PER_NODE"):
        return _int(env["SLURM_NTASKS_PER_NODE"], "SLURM_NTASKS_PER_NODE", 1)
    match = re.match(r"(\d+)", env.get("SLURM_TASKS_PER_NODE", ""))
    return int(match.group(1)) if match else None


def _slurm(env: Mapping[str, str]) -> Launch:
    local = _int(env["SLURM_LOCALID"], "SLURM_LOCALID", 0)
    tasks = _tasks_per_node(env)
    gpus = env.get("SLURM_GPUS_ON_NODE")
    ids: tuple[int, ...] | None = (local,)  # JAX's own rule: one device per task
    if gpus and tasks:
        gpus_on_node = _int(gpus, "SLURM_GPUS_ON_NODE", 1)
        if gpus_on_node % tasks:
            raise ConfigError(
                f"SLURM_GPUS_ON_NODE={gpus_on_node} is not a multiple of the {tasks} tasks per "
                "node: give every task the same number of GPUs"
            )
        per_task = gpus_on_node // tasks
        ids = tuple(range(local * per_task, (local + 1) * per_task))
    return Launch("slurm", local_device_ids=ids)


def resolve(
    env: Mapping[str, str],
    *,
    coordinator: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    local_device_ids: str | None = None,
    auto: bool = False,
) -> Launch:
    """This process's ``Launch`` from the flags and the environment (see the module
    docstring for the order). Pure: reads ``env``, starts nothing.

    Raises:
      ConfigError: a partial or malformed description, naming the flag or variable.
    """
    flags = (coordinator, num_processes, process_id)
    if any(v is not None for v in flags) or local_device_ids is not None:
        names = ("--coordinator", "--num-processes", "--process-id", "--local-device-ids")
        return _explicit(*flags, local_device_ids, names, "flags")
    if any(env.get(name) for name in ENV_VARS):
        values = [env.get(name) for name in ENV_VARS]
        names = (*ENV_VARS, "JAXALIGN_LOCAL_DEVICE_IDS")
        return _explicit(*values, env.get("JAXALIGN_LOCAL_DEVICE_IDS"), names, "env")
    slurm = all(name in env for name in SLURM_VARS)
    if slurm and _int(env["SLURM_NTASKS"], "SLURM_NTASKS", 1) > 1:
        return _slurm(env)
    return Launch("auto") if auto else Launch("single")


def initialize(launch: Launch) -> None:
    """``jax.distributed.initialize`` for a multi-process ``launch`` (nothing for "single");
    call it before any other jax computation."""
    if launch.source == "single":
        return
    import jax

    jax.distributed.initialize(**launch.kwargs())


def describe(launch: Launch) -> str:
    """One line for the log: where the process's place in the job came from."""
    if launch.source == "single":
        return "one process"
    shown = ", ".join(f"{k}={v}" for k, v in launch.kwargs().items()) or "detected by JAX"
    return f"jax.distributed from {launch.source}: {shown}"
