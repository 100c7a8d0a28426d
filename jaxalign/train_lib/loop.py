"""The steps of one run: dispatch, read back, log, evaluate, checkpoint, stop.

``Loop.run`` drives a compiled step (``make_train_step``) over the task's stream from a start
step to ``config.train.steps``. It keeps one step in flight (step ``s + 1`` is dispatched
before the metrics of step ``s`` are read back), logs every ``train.log_every`` steps (with the
examples the stream skipped as bad, per reason, summed over processes), evaluates every
``train.eval_every`` steps and checkpoints every ``train.checkpoint_every`` steps. It stops:

- on SIGTERM / SIGINT (or, with several processes, at jax's preemption sync point), also while
  waiting for a batch: saves, raises ``Preempted``;
- when the stream gives up on bad data (``DataError``): saves what was trained, re-raises;
- after ``optim.max_nonfinite_in_a_row`` skipped non-finite updates (``TrainingDivergedError``).
  While such a streak runs, no checkpoint is saved and no eval runs, so the newest checkpoint
  is always from before the streak;
- after ``train.max_failed_saves`` checkpoint saves failed in a row (``SavesFailedError``);
  each failure is logged in one line as soon as it is known.

It knows nothing of a task but the ``Task`` protocol.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh

from jaxalign.data import to_global_array
from jaxalign.errors import DataError, RunStopped
from jaxalign.parallel.multihost import gather_json
from jaxalign.train_lib.checkpoint import Checkpointer
from jaxalign.train_lib.fetcher import Fetcher, FetchInterrupted
from jaxalign.train_lib.metric_writers import MetricWriter
from jaxalign.train_lib.preemption import StopSignal
from jaxalign.train_lib.state import TrainState
from jaxalign.train_lib.throughput import Throughput


class TrainingDivergedError(RunStopped):
    """Too many updates in a row had a non-finite loss or gradients."""


class SavesFailedError(RunStopped):
    """Too many checkpoint saves failed in a row."""


class Preempted(Exception):
    """The run stopped on SIGTERM / SIGINT (after saving a checkpoint when one was due)."""

    def __init__(self, step: int, signal_name: str, newest: str = "none yet"):
        super().__init__(f"stopped by {signal_name} at step {step}; newest checkpoint: {newest}")
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
    last_step: int = 0  # the last step read back
    fetch_abandoned: bool = False  # a stop ended a wait for data: the iterator may be busy
    last_data_metrics: dict[str, Any] = dataclasses.field(default_factory=dict)
    nonfinite_in_a_row: int = 0  # as of that step
    nonfinite_total: int = 0

    def run(self, state: TrainState, start_step: int, stop: StopSignal) -> tuple[TrainState, int]:
        """Steps ``start_step`` -> ``train.steps``; returns ``(state, last step)``."""
        total_steps = self.config.train.steps
        pending: tuple[int, Any] | None = None
        step = start_step
        self.throughput.reset()
        if stop.requested:  # during set-up or compilation: nothing new to save
            self._stopped(step, stop)
        fetcher = Fetcher(self.iterator)
        try:
            while step < total_steps:
                data_state = self.iterator.get_state()  # what a save while waiting keeps
                waiting = time.perf_counter()
                try:
                    local = fetcher.next(
                        lambda: bool(stop.requested), on_slow=self._slow_data(step + 1)
                    )
                    self.throughput.waited(time.perf_counter() - waiting)
                except (FetchInterrupted, DataError) as error:
                    self.fetch_abandoned = isinstance(error, FetchInterrupted)
                    self._finish(pending)
                    if step > start_step:
                        self.save(step, state, data_state)
                        self._check_saves(wait=True)
                    if stop.requested:
                        self._stopped(step, stop)
                    raise
                state, step, pending = self._step(state, step, pending, local, start_step, stop)
        finally:
            fetcher.close()
        self._finish(pending)
        if self.nonfinite_in_a_row:  # the last updates were skipped: nothing new to keep
            raise TrainingDivergedError(
                f"step {step}: the run ended during {self.nonfinite_in_a_row} non-finite "
                f"updates in a row; the newest checkpoint, {self._newest()}, is from before "
                "them: run the same command with a lower --config.optim.lr to resume from it"
            )
        return state, step

    def _slow_data(self, step: int) -> Any:
        def log(waited: float) -> None:
            self.writer.log(f"step {step}: waiting {waited:.0f} s for the next batch")

        return log

    def _step(self, state, step, pending, local, start_step, stop):
        """Dispatches one step on ``local``; reads back the previous one; checkpoints,
        evaluates and stops when due. Returns ``(state, step, pending)``."""
        train = self.config.train
        total_steps = train.steps
        if step == start_step:
            check_batch(local, self.task.batch_spec(), jax.process_count())
        state, metrics = self.compiled(state, to_global_array(local, self.mesh))
        step += 1
        self._finish(pending)
        pending = (step, metrics)
        self._check_saves()
        checkpoint_due = step % train.checkpoint_every == 0
        eval_due = step % train.eval_every == 0 and step < total_steps
        if jax.process_count() > 1:  # every process asks at every step (jax's sync point)
            stopping = self.checkpointer.reached_preemption(step)
        else:
            stopping = bool(stop.requested)
        if not (checkpoint_due or eval_due or stopping):
            return state, step, pending
        self._finish(pending)
        if checkpoint_due or stopping:  # saved first: an eval that fails loses nothing
            self.save(step, state, self.iterator.get_state())
        if stopping:
            self._check_saves(wait=True)
            self._stopped(step, stop)
        if eval_due:
            self.evaluate(state, step, None)
        self.throughput.reset()  # evals and saves are not training time
        return state, step, None

    def _finish(self, pending: tuple[int, Any] | None) -> None:
        if pending is not None:
            self.finish_step(*pending)

    def _stopped(self, step: int, stop: StopSignal) -> None:
        reason = stop.requested or "a preemption notice"
        newest = self._newest()
        self.writer.log(f"{reason} at step {step}: newest checkpoint {newest}; stopping")
        raise Preempted(step, reason, newest)

    def _newest(self) -> str:
        """The newest complete checkpoint (a save in flight is waited for first)."""
        for line in self.checkpointer.check_saves(wait=True):
            self.writer.log(f"error: {line}")
        step = self.checkpointer.latest_step()
        return "none yet" if step is None else str(step)

    def save(self, step: int, state: TrainState, data_state: Any) -> None:
        """Saves checkpoint ``step`` unless a non-finite streak is running (then the newest
        checkpoint stays the last one from before it)."""
        if self.nonfinite_in_a_row:
            self.writer.log(
                f"step {step}: checkpoint not saved: {self.nonfinite_in_a_row} non-finite "
                f"updates in a row; the newest stays {self._newest()}"
            )
            return
        self._check_saves(wait=True)  # the last save's outcome first (orbax waits anyway)
        self.checkpointer.save(step, state, data_state)

    def _check_saves(self, *, wait: bool = False) -> None:
        """Logs each failed save in one line; stops after ``train.max_failed_saves`` in a
        row."""
        for line in self.checkpointer.check_saves(wait=wait):
            self.writer.log(f"error: {line}")
        limit = self.config.train.max_failed_saves
        if self.checkpointer.failed_in_a_row >= limit:
            raise SavesFailedError(
                f"{self.checkpointer.failed_in_a_row} checkpoint saves in a row failed "
                f"(config.train.max_failed_saves={limit}); the newest saved checkpoint is "
                f"{self._newest()}. Free space in "
                f"{self.checkpointer.directory} and run the same command to resume"
            )

    def finish_step(self, step: int, metrics: Any) -> None:
        """Reads back step ``step``'s metrics: stops a diverged run, logs when due."""
        metrics = jax.device_get(metrics)
        self.last_step = step
        self.throughput.count()
        limit = self.config.optim.max_nonfinite_in_a_row
        self.nonfinite_in_a_row = in_a_row = int(metrics.pop("nonfinite_in_a_row"))
        self.nonfinite_total = int(metrics["nonfinite_total"])
        if in_a_row >= limit:
            raise TrainingDivergedError(
                f"step {step}: {in_a_row} updates in a row had a non-finite loss or gradients "
                f"(config.optim.max_nonfinite_in_a_row={limit}); stopped. The newest "
                f"checkpoint, {self._newest()}, is from before them: run the same command with "
                "a lower --config.optim.lr to resume from it, or check the data"
            )
        loss = float(metrics["loss"])
        if step % self.config.train.log_every and step != self.config.train.steps:
            self.writer.advance(step)
            return
        # The rate this step's update used (or would have): skipped updates do not advance
        # the optimizer's count, so it is the number of applied updates before this one.
        applied = step - 1 - (int(metrics["nonfinite_total"]) - int(metrics["skipped"]))
        data = self.data_metrics()
        timing = self.throughput.report()
        row = self.writer.write(
            step,
            {**metrics, "lr": self.schedule(applied), **timing, **data},
            unfiled=() if self.config.train.timing_in_metrics else tuple(timing),
        )
        shown = {"loss": f"{loss:.5g}"}
        if "examples_per_s" in row:
            shown["examples/s"] = f"{row['examples_per_s']:.1f}"
        shown.update(_skipped_shown(data))
        self.writer.advance(step, shown)
        self.writer.log(f"step {step}: " + ", ".join(f"{k} {v}" for k, v in shown.items()))

    def data_metrics(self) -> dict[str, Any]:
        """The stream's ``metrics()`` summed over processes (a collective: every process
        calls it at the same steps), with ``.../skipped_fraction`` of the examples read;
        {} when the stream has no ``metrics``."""
        method = getattr(self.iterator, "metrics", None)
        if not callable(method):
            return {}
        if self.fetch_abandoned:  # the fetch thread may still be inside the iterator
            return self.last_data_metrics
        self.last_data_metrics = summed_counts(gather_json(method()))
        return self.last_data_metrics

    def evaluate(self, state: TrainState, step: int, progress: bool | None) -> dict[str, Any]:
        """Runs the task's evals (``state.eval_variables()``); writes and returns the
        ``eval/`` row. Skipped (``{}``) while a non-finite streak runs."""
        if self.nonfinite_in_a_row:
            self.writer.log(
                f"eval at step {step} skipped: {self.nonfinite_in_a_row} non-finite updates "
                "in a row"
            )
            return {}
        started = time.perf_counter()
        variables = state.eval_variables()
        results = self.task.evaluate(variables, progress=bool(progress))
        row = {f"eval/{k}": v for k, v in results.items()}
        eval_images = getattr(self.task, "eval_images", None)  # a task may lack the default
        if eval_images is not None:
            self.writer.write_images(step, eval_images(variables))
        if row:
            self.writer.write(step, row)
            shown = ", ".join(f"{k} {v:.4g}" for k, v in results.items() if "chance" not in k)
            seconds = time.perf_counter() - started
            self.writer.log(f"eval at step {step} ({seconds:.1f} s): {shown}")
        return row


def summed_counts(per_process: list[dict[str, Any]]) -> dict[str, Any]:
    """A stream's ``metrics()`` of each process, summed, with ``.../skipped_fraction`` of the
    examples read for each ``.../data/skipped`` count."""
    total: dict[str, Any] = {}
    for counts in per_process:
        for key, value in counts.items():
            total[key] = total.get(key, 0) + value
    for key in [k for k in total if k.endswith("data/skipped")]:
        read = total[key] + total.get(key.replace("/skipped", "/examples"), 0)
        total[key + "_fraction"] = total[key] / read if read else 0.0
    return total


def _skipped_shown(data: dict[str, Any]) -> dict[str, str]:
    """``{"skipped": "17 (17.5%: corrupt_image 12, missing_caption 5)"}`` per stream with
    skipped examples; {} when none were."""
    shown = {}
    for key in [k for k in data if k.endswith("data/skipped") and data[k]]:
        reasons = ", ".join(
            f"{k[len(key) + 1 :]} {v}" for k, v in data.items() if k.startswith(key + "/")
        )
        name = key[: -len("data/skipped")] + "skipped"
        shown[name] = f"{data[key]} ({100 * data[key + '_fraction']:.1f}%: {reasons})"
    return shown
