"""The steps of one run: dispatch, read back, log, evaluate, checkpoint, stop.

``Loop.run`` drives a compiled step (``make_train_step``) over the task's stream from a start
step to ``config.train.steps``. It keeps one step in flight (step ``s + 1`` is dispatched
before the metrics of step ``s`` are read back), stops a run whose updates keep being
non-finite (``TrainingDivergedError``), logs every ``train.log_every`` steps, evaluates every
``train.eval_every`` steps, checkpoints every ``train.checkpoint_every`` steps, and on SIGTERM /
SIGINT (or, with several processes, at jax's preemption sync point) saves and raises
``Preempted``. It knows nothing of a task but the ``Task`` protocol.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh

from jaxalign.data import to_global_array
from jaxalign.train_lib.checkpoint import Checkpointer
from jaxalign.train_lib.metric_writers import MetricWriter
from jaxalign.train_lib.preemption import StopSignal
from jaxalign.train_lib.state import TrainState
from jaxalign.train_lib.throughput import Throughput


class TrainingDivergedError(RuntimeError):
    """Too many updates in a row had a non-finite loss or gradients."""


class Preempted(Exception):
    """The run stopped on SIGTERM / SIGINT after saving a checkpoint."""

    def __init__(self, step: int, signal_name: str):
        super().__init__(f"stopped by {signal_name} at step {step}; checkpoint saved")
        self.step = step


def check_batch(batch: Any, spec: Any, processes: int) -> None:
    """Raises ValueError naming the leaf when a stream's batch (this process's share) does not
    match the task's ``batch_spec`` (global shapes) in structure, shape or dtype."""
    flat, tree = jax.tree_util.tree_flatten_with_path(batch)
    spec_flat, spec_tree = jax.tree_util.tree_flatten_with_path(spec)
    if tree != spec_tree:
        raise ValueError(f"the train stream's batch has structure {tree}; batch_spec {spec_tree}")
    for (path, leaf), (_, want) in zip(flat, spec_flat, strict=True):
        leaf = np.asarray(leaf)
        shape = (want.shape[0] // processes, *want.shape[1:])
        if leaf.shape != shape or leaf.dtype != want.dtype:
            raise ValueError(
                f"the train stream's batch leaf {jax.tree_util.keystr(path)} is {leaf.shape} "
                f"{leaf.dtype}; the task's batch_spec asks {shape} {want.dtype} per process "
                f"({want.shape} over {processes})"
            )


@dataclasses.dataclass
class Loop:
    """The steps of one run, with what they log, evaluate and checkpoint."""

    config: Any
    task: Any
    mesh: Mesh
    compiled: Any  # state, batch -> state, metrics
    schedule: Any  # optax learning-rate schedule
    iterator: Any
    checkpointer: Checkpointer
    writer: MetricWriter
    throughput: Throughput

    def run(self, state: TrainState, start_step: int, stop: StopSignal) -> tuple[TrainState, int]:
        """Steps ``start_step`` -> ``train.steps``; returns ``(state, last step)``."""
        train = self.config.train
        total_steps = train.steps
        pending: tuple[int, Any] | None = None
        step = start_step
        self.throughput.reset()
        while step < total_steps:
            local = next(self.iterator)
            if step == start_step:
                check_batch(local, self.task.batch_spec(), jax.process_count())
            state, metrics = self.compiled(state, to_global_array(local, self.mesh))
            step += 1
            if pending is not None:
                self.finish_step(*pending)
            pending = (step, metrics)
            checkpoint_due = step % train.checkpoint_every == 0
            eval_due = step % train.eval_every == 0 and step < total_steps
            if jax.process_count() > 1:  # every process asks at every step (jax's sync point)
                stopping = self.checkpointer.reached_preemption(step)
            else:
                stopping = bool(stop.requested)
            if not (checkpoint_due or eval_due or stopping):
                continue
            self.finish_step(*pending)
            pending = None
            if checkpoint_due or stopping:  # saved first: an eval that fails loses nothing
                self.checkpointer.save(step, state, self.iterator.get_state())
            if stopping:
                self.checkpointer.wait()
                reason = stop.requested or "a preemption notice"
                self.writer.log(f"{reason}: saved checkpoint {step}; stopping")
                raise Preempted(step, reason)
            if eval_due:
                self.evaluate(state, step, None)
            self.throughput.reset()  # evals and saves are not training time
        if pending is not None:
            self.finish_step(*pending)
        return state, step

    def finish_step(self, step: int, metrics: Any) -> None:
        """Reads back step ``step``'s metrics: stops a diverged run, logs when due."""
        metrics = jax.device_get(metrics)
        self.throughput.count()
        limit = self.config.optim.max_nonfinite_in_a_row
        in_a_row = int(metrics.pop("nonfinite_in_a_row"))
        if in_a_row >= limit:
            raise TrainingDivergedError(
                f"step {step}: {in_a_row} updates in a row had a non-finite loss or gradients "
                f"(config.optim.max_nonfinite_in_a_row={limit}); stopped. The newest "
                "checkpoint is untouched; lower config.optim.lr or check the data."
            )
        loss = float(metrics["loss"])
        if step % self.config.train.log_every and step != self.config.train.steps:
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
        """Runs the task's evals (``state.eval_variables()``); writes and returns the
        ``eval/`` row."""
        started = time.perf_counter()
        results = self.task.evaluate(state.eval_variables(), progress=bool(progress))
        row = {f"eval/{k}": v for k, v in results.items()}
        if row:
            self.writer.write(step, row)
            shown = ", ".join(f"{k} {v:.4g}" for k, v in results.items() if "chance" not in k)
            seconds = time.perf_counter() - started
            self.writer.log(f"eval at step {step} ({seconds:.1f} s): {shown}")
        return row
