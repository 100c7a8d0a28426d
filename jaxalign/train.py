"""The trainer: one loop for every task.

    python -m jaxalign.train --config=configs/clip.py:demo --workdir=runs/demo [--config.KEY=VALUE]
    jaxalign train --config=configs/clip.py:demo --workdir=runs/demo

Running the same command on the same work directory resumes from its newest complete
checkpoint. What the work directory holds (``config.json``, ``env.json``, ``metrics.jsonl``,
``summary.json``, ``checkpoints/``, ``tensorboard/``) is described in DESIGN.md.

``train_and_evaluate`` reads top to bottom: check the config, set up the mesh, the task and its
data, the optimizer and the abstract state; restore or initialise; compile the step once; loop
(log, evaluate, checkpoint, stop on a signal); evaluate and summarise at the end.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from collections.abc import Sequence
from typing import Any, NamedTuple

import jax
import ml_collections
import optax
from jax.sharding import Mesh

from jaxalign import config as config_lib
from jaxalign import environment
from jaxalign.cli import add_train_arguments
from jaxalign.data import to_global_array
from jaxalign.parallel import batch_sharding, make_mesh
from jaxalign.parallel.mesh import describe_mesh
from jaxalign.parallel.sharding import abstract_init, activation_context, sharded_init
from jaxalign.tasks import get_task
from jaxalign.train_lib import TrainState, make_optimizer, make_train_step
from jaxalign.train_lib.checkpoint import Checkpointer
from jaxalign.train_lib.metric_writers import MetricWriter
from jaxalign.train_lib.preemption import PREEMPTED_EXIT_CODE, StopSignal
from jaxalign.train_lib.throughput import Throughput, peak_flops, step_flops


class TrainingDivergedError(RuntimeError):
    """Too many updates in a row had a non-finite loss or gradients."""


class Preempted(Exception):
    """The run stopped on SIGTERM / SIGINT after saving a checkpoint."""

    def __init__(self, step: int, signal_name: str):
        super().__init__(f"stopped by {signal_name} at step {step}; checkpoint saved")
        self.step = step


def _write_json(path: str, value: Any) -> None:
    if jax.process_index() == 0:
        with open(path + ".tmp", "w") as f:
            json.dump(value, f, indent=2)
            f.write("\n")
        os.replace(path + ".tmp", path)


class _Setup(NamedTuple):
    """What a run is built from, before any state exists."""

    mesh: Mesh
    task: Any
    tx: optax.GradientTransformation
    schedule: optax.Schedule
    init_state: Any  # rng -> TrainState (boxed, for sharded_init)
    rng: jax.Array
    abstract_state: Any  # ShapeDtypeStructs with their shardings
    state_shardings: Any

    def compile_step(self) -> tuple[Any, float | None]:
        """The jitted step, compiled once for the batch's shapes (``.lower().compile()``), and
        the FLOPs one device runs per step."""
        task, mesh = self.task, self.mesh
        step = make_train_step(
            task.make_grad_fn(mesh), self.tx, self.state_shardings, batch_sharding(mesh)
        )
        examples = task.example_batch(int(task.config.train.global_batch_size))
        abstract_batch = {
            k: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=batch_sharding(mesh))
            for k, v in examples.items()
        }
        with activation_context(mesh):
            compiled = step.lower(self.abstract_state, abstract_batch).compile()
        return compiled, step_flops(compiled)


def _setup(config: ml_collections.ConfigDict, devices: Sequence[jax.Device] | None) -> _Setup:
    """Config checks (before anything compiles), mesh, task with its data, optimizer, and the
    state's abstract shapes and shardings."""
    devices = list(jax.devices() if devices is None else devices)
    config_lib.validate(config, num_devices=len(devices))
    mesh = make_mesh(dict(config.mesh), devices)
    task = get_task(config)
    task.prepare_data()
    task.check_eval_data()
    tx, schedule = make_optimizer(config.optim, int(config.train.steps))
    batch = task.example_batch(int(config.train.global_batch_size))

    def init_state(rng):
        return TrainState.create(task.init(rng, batch)["params"], tx)

    rng = jax.random.key(int(config.seed))
    abstract_state, state_shardings = abstract_init(init_state, mesh, rng)
    return _Setup(mesh, task, tx, schedule, init_state, rng, abstract_state, state_shardings)


def train_and_evaluate(
    config: ml_collections.ConfigDict,
    workdir: str | os.PathLike,
    *,
    devices: Sequence[jax.Device] | None = None,
    progress: bool | None = None,
) -> dict[str, Any]:
    """Trains ``config`` in ``workdir`` (resuming from its newest checkpoint), evaluates, and
    returns the summary (also written to ``workdir/summary.json``).

    Args:
      config: a config from ``jaxalign.config.load``; validated here before compiling.
      workdir: the run's directory (created).
      devices: the devices of the mesh; all of them by default.
      progress: show a progress bar; ``None``: when stderr is a terminal.

    Raises:
      ConfigError / MissingDataError: a bad config or missing data (names the key).
      TrainingDivergedError: ``optim.max_nonfinite_in_a_row`` skipped updates in a row.
      Preempted: SIGTERM or SIGINT arrived; a checkpoint of the last step was saved.
    """
    workdir = os.path.abspath(os.fspath(workdir))
    started = time.perf_counter()
    setup = _setup(config, devices)
    mesh, task = setup.mesh, setup.task
    os.makedirs(workdir, exist_ok=True)
    if jax.process_index() == 0:
        config_lib.save(config, workdir)
    peak = peak_flops(mesh.devices.flat[0].device_kind)
    _write_json(
        os.path.join(workdir, "env.json"),
        {
            **environment.describe(),
            "mesh": dict(mesh.shape),
            "peak_flops_per_device": peak,
            "peak_flops_source": "dense bfloat16, vendor data sheet" if peak else "unknown device",
        },
    )

    # Resume order:
    #   1. the newest complete checkpoint in workdir/checkpoints gives the state (restored into
    #      this mesh's shardings) and this process's data-iterator position;
    #   2. without one, the state is initialised from config.seed, sharded, and the data start
    #      from the beginning of the seed's first epoch;
    #   3. rows of metrics.jsonl (and TensorBoard events) after the restored step are dropped.
    checkpointer = Checkpointer(
        os.path.join(workdir, "checkpoints"), keep=int(config.train.keep_checkpoints)
    )
    iterator = iter(task.train_pipeline())
    if checkpointer.latest_step() is not None:
        state, data_state, start_step = checkpointer.restore(setup.abstract_state)
        iterator.set_state(data_state)
    else:
        state, _ = sharded_init(setup.init_state, mesh, setup.rng, shardings=setup.state_shardings)
        start_step = 0

    compiled, flops = setup.compile_step()
    total_steps, batch_size = int(config.train.steps), int(config.train.global_batch_size)
    writer = MetricWriter(
        workdir, total_steps=total_steps, start_step=start_step, progress=progress
    )
    writer.log(
        f"jaxalign: {config.task} on {describe_mesh(mesh)} ({mesh.devices.flat[0].device_kind}), "
        f"global batch {batch_size}, steps {start_step} -> {total_steps}"
        + (f", resumed from checkpoint {start_step}" if start_step else "")
        + (f"; {flops / 1e9:.4g} GFLOP per device per step" if flops else "")
    )
    loop = _Loop(
        config=config,
        task=task,
        mesh=mesh,
        compiled=compiled,
        schedule=setup.schedule,
        iterator=iterator,
        checkpointer=checkpointer,
        writer=writer,
        throughput=Throughput(batch_size, flops, peak),
    )
    eval_row: dict[str, Any] = {}
    try:
        with StopSignal() as stop:
            state, step = loop.run(state, start_step, stop)
            if step == total_steps:
                eval_row = loop.evaluate(state, step, progress)
        checkpointer.save(step, state, iterator.get_state())
        checkpointer.wait()
    finally:
        checkpointer.close()
        writer.close()
        iterator.close()

    summary = {
        "step": step,
        **eval_row,
        "nonfinite_total": int(state.nonfinite_total),
        "wall_s": round(time.perf_counter() - started, 1),
    }
    _write_json(os.path.join(workdir, "summary.json"), summary)
    return summary


@dataclasses.dataclass
class _Loop:
    """The steps of one run, with what they log, evaluate and checkpoint."""

    config: ml_collections.ConfigDict
    task: Any
    mesh: Mesh
    compiled: Any  # state, batch -> state, metrics
    schedule: Any  # optax learning-rate schedule
    iterator: Any
    checkpointer: Checkpointer
    writer: MetricWriter
    throughput: Throughput

    def run(self, state: TrainState, start_step: int, stop: StopSignal) -> tuple[TrainState, int]:
        """Steps ``start_step`` -> ``train.steps``; returns ``(state, last step)``.

        One step stays in flight: step ``s + 1`` is dispatched before the metrics of step ``s``
        are read back, which keeps the devices busy and bounds the work queued on them.
        """
        train = self.config.train
        total_steps = int(train.steps)
        pending: tuple[int, Any] | None = None
        step = start_step
        self.throughput.reset()
        while step < total_steps:
            batch = to_global_array(next(self.iterator), self.mesh)
            state, metrics = self.compiled(state, batch)
            step += 1
            if pending is not None:
                self.finish_step(*pending)
            pending = (step, metrics)
            checkpoint_due = step % int(train.checkpoint_every) == 0
            eval_due = step % int(train.eval_every) == 0 and step < total_steps
            if jax.process_count() > 1:  # every process asks at every step (jax's sync point)
                stopping = self.checkpointer.reached_preemption(step)
            else:
                stopping = bool(stop.requested)
            if not (checkpoint_due or eval_due or stopping):
                continue
            self.finish_step(*pending)
            pending = None
            if eval_due:
                self.evaluate(state, step, None)
            if checkpoint_due or stopping:
                self.checkpointer.save(step, state, self.iterator.get_state())
            if stopping:
                self.checkpointer.wait()
                reason = stop.requested or "a preemption notice"
                self.writer.log(f"{reason}: saved checkpoint {step}; stopping")
                raise Preempted(step, reason)
            self.throughput.reset()  # evals and saves are not training time
        if pending is not None:
            self.finish_step(*pending)
        return state, step

    def finish_step(self, step: int, metrics: Any) -> None:
        """Reads back step ``step``'s metrics: stops a diverged run, logs when due."""
        metrics = jax.device_get(metrics)
        self.throughput.count()
        limit = int(self.config.optim.max_nonfinite_in_a_row)
        in_a_row = int(metrics.pop("nonfinite_in_a_row"))
        if in_a_row >= limit:
            raise TrainingDivergedError(
                f"step {step}: {in_a_row} updates in a row had a non-finite loss or gradients "
                f"(config.optim.max_nonfinite_in_a_row={limit}); stopped. The newest "
                "checkpoint is untouched; lower config.optim.lr or check the data."
            )
        loss = float(metrics["loss"])
        if step % int(self.config.train.log_every) and step != int(self.config.train.steps):
            self.writer.advance(step)
            return
        # The rate this step's update used (or would have): skipped updates do not advance
        # the optimizer's count, so it is the number of applied updates before this one.
        applied = step - 1 - (int(metrics["nonfinite_total"]) - int(metrics["skipped"]))
        row = self.writer.write(
            step, {**metrics, "lr": self.schedule(applied), **self.throughput.report()}
        )
        shown = {"loss": f"{loss:.5g}"}
        if "examples_per_s" in row:
            shown["examples/s"] = f"{row['examples_per_s']:.1f}"
        self.writer.advance(step, shown)
        self.writer.log(f"step {step}: " + ", ".join(f"{k} {v}" for k, v in shown.items()))

    def evaluate(self, state: TrainState, step: int, progress: bool | None) -> dict[str, Any]:
        """Runs the task's evals on ``state.params``; writes and returns the ``eval/`` row."""
        started = time.perf_counter()
        results = self.task.evaluate(state.params, self.mesh, progress=bool(progress))
        row = {f"eval/{k}": v for k, v in results.items()}
        if row:
            self.writer.write(step, row)
            shown = ", ".join(f"{k} {v:.4g}" for k, v in results.items() if "chance" not in k)
            seconds = time.perf_counter() - started
            self.writer.log(f"eval at step {step} ({seconds:.1f} s): {shown}")
        return row


def evaluate_workdir(workdir: str | os.PathLike, *, progress: bool | None = None) -> dict:
    """Re-runs the task's evals from the newest checkpoint of a run; returns the metrics (also
    written to ``workdir/eval.json``)."""
    workdir = os.path.abspath(os.fspath(workdir))
    path = os.path.join(workdir, "config.json")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path} does not exist: {workdir!r} is not a jaxalign run")
    config = config_lib.load_json(path)
    setup = _setup(config, None)
    checkpointer = Checkpointer(
        os.path.join(workdir, "checkpoints"),
        keep=int(config.train.keep_checkpoints),
        read_only=True,  # the run may still be writing there
    )
    try:
        state, _, step = checkpointer.restore(setup.abstract_state)
    finally:
        checkpointer.close()
    results = setup.task.evaluate(state.params, setup.mesh, progress=progress)
    out = {"step": step, **{f"eval/{k}": v for k, v in results.items()}}
    _write_json(os.path.join(workdir, "eval.json"), out)
    return out


def run(args: argparse.Namespace, overrides: Sequence[str]) -> int:
    """Runs a parsed ``train`` command line; returns the exit status."""
    bad = [o for o in overrides if not o.startswith("--config.")]
    if bad:
        print(f"unknown arguments {bad}; overrides are --config.KEY=VALUE", file=sys.stderr)
        return 2
    if args.distributed:
        jax.distributed.initialize()
    try:
        config = config_lib.load(args.config, overrides)
        summary = train_and_evaluate(config, args.workdir, progress=args.progress)
    except (config_lib.ConfigError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except TrainingDivergedError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    except Preempted as stop:
        print(f"{stop}; run the same command again to resume", file=sys.stderr)
        return PREEMPTED_EXIT_CODE
    print(json.dumps(summary, indent=2))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = add_train_arguments(argparse.ArgumentParser(prog="python -m jaxalign.train"))
    args, overrides = parser.parse_known_args(argv)
    return run(args, overrides)


if __name__ == "__main__":
    sys.exit(main())
