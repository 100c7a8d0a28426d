"""The trainer: one loop for every task (library code; the command line is ``jaxalign.cli``).

    jaxalign train --config=configs/clip.py:demo --workdir=runs/demo [--config.KEY=VALUE ...]
    python -m jaxalign train ...   # the same

Running the same command on the same work directory resumes from its newest complete, readable
checkpoint. What the work directory holds (``jaxalign-run.json``, ``jaxalign-run.lock``,
``config.json``, ``config_changes.jsonl``, ``env.json``, ``metrics.jsonl``, ``summary.json``,
``checkpoints/``, ``tensorboard/``) is described in docs/architecture.md; what happens when
something goes wrong (bad data, divergence, a damaged checkpoint, a full disk, a second run on
the same directory) in docs/reliability.md.

``train_and_evaluate`` reads top to bottom: check the config, open (mark and lock) the work
directory, check that the config is the run's own when resuming, set up the mesh, the task and
its data, the optimizer and the abstract state; restore or initialise (from
``config.init_from`` when set); compile the step once; loop (log, evaluate, checkpoint, stop on
a signal, on bad data, on divergence or on failing saves); evaluate and summarise at the end
(``summary.json`` is written however the run ends). Everything about a task goes through the
``jaxalign.tasks.Task`` protocol.
"""

from __future__ import annotations

import datetime
import os
import sys
import time
from collections.abc import Sequence
from typing import Any, NamedTuple

import jax
import optax
from jax.sharding import Mesh

from jaxalign import config as config_lib
from jaxalign import environment
from jaxalign.data import elastic
from jaxalign.errors import RunStopped, UserError, WorkdirError
from jaxalign.parallel import batch_sharding, describe_mesh, make_mesh
from jaxalign.parallel.multihost import meet
from jaxalign.parallel.sharding import abstract_init, activation_context, sharded_init
from jaxalign.schema import ConfigError, ExperimentConfig
from jaxalign.tasks import Task, get_task
from jaxalign.train_lib import TrainState, make_optimizer, make_train_step, run_files
from jaxalign.train_lib.checkpoint import Checkpointer
from jaxalign.train_lib.loop import Loop, Preempted, SavesFailedError, TrainingDivergedError
from jaxalign.train_lib.metric_writers import MetricWriter, save_pngs
from jaxalign.train_lib.preemption import PREEMPTED_EXIT_CODE, StopSignal
from jaxalign.train_lib.throughput import Throughput, objective_seconds, peak_flops, step_flops
from jaxalign.train_lib.transfer import load_from_run
from jaxalign.train_lib.workdir import absolute as absolute_path
from jaxalign.train_lib.workdir import open_workdir

__all__ = [
    "PREEMPTED_EXIT_CODE",
    "Preempted",
    "RunStopped",
    "SavesFailedError",
    "TrainingDivergedError",
    "UserError",
    "evaluate_workdir",
    "train_and_evaluate",
]


def _record_changes(workdir: str, step: int, changes: list[tuple[str, Any, Any]]) -> None:
    """Appends the keys changed on resume to ``config_changes.jsonl``, with the step they
    take effect at."""
    when = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    rows = [
        {"step": step, "key": k, "old": old, "new": new, "time": when} for k, old, new in changes
    ]
    run_files.append_json_lines(workdir, "config_changes.jsonl", rows)


class RunSetup(NamedTuple):
    """What a run is built from, before any state exists."""

    mesh: Mesh
    task: Task
    tx: optax.GradientTransformation
    schedule: optax.Schedule
    init_state: Any  # rng -> TrainState (boxed, for sharded_init)
    rng: jax.Array
    abstract_state: Any  # ShapeDtypeStructs with their shardings
    state_shardings: Any

    def compile_step(self) -> tuple[Any, float | None]:
        """The jitted step, compiled once for the task's batch shapes (``.lower().compile()``
        on ``jax.ShapeDtypeStruct``s: no batch is built), and the FLOPs one device runs per
        step."""
        compiled = self.lower_step().compile()
        return compiled, step_flops(compiled)

    def lower_step(self, platforms: Sequence[str] | None = None) -> Any:
        """The step lowered for the task's batch shapes (``jax.stages.Lowered``), for this
        backend or for ``platforms`` (``("cuda",)``: read on CPU what a GPU would run)."""
        task, mesh = self.task, self.mesh
        sharding = batch_sharding(mesh)
        step = make_train_step(
            task.loss_and_grad,
            self.tx,
            seed=task.config.seed,
            ema_decay=task.config.optim.ema_decay,
            state_shardings=self.state_shardings,
            batch_sharding=sharding,
        )
        abstract_batch = jax.tree.map(
            lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sharding), task.batch_spec()
        )
        with activation_context(mesh):
            traced = step.trace(self.abstract_state, abstract_batch)
            return traced.lower(lowering_platforms=tuple(platforms) if platforms else None)


def setup_run(
    config: ExperimentConfig, devices: Sequence[jax.Device], *, prepare_data: bool = True
) -> RunSetup:
    """Mesh, task with its data, optimizer (with the task's parameter groups), and the state's
    abstract shapes and shardings (``jax.eval_shape`` of the init: nothing is computed).
    ``prepare_data=False`` leaves the data alone (compiling a step without a dataset on disk,
    as ``benchmarks/fsdp_memory.py`` does)."""
    mesh = make_mesh(dict(config.mesh), devices)
    task = get_task(config, mesh)
    if prepare_data:
        task.prepare_data()
    tx, schedule = make_optimizer(config.optim, config.train.steps, task.param_groups())
    ema = config.optim.ema_decay > 0

    def init_state(rng):
        return TrainState.create(task.init(rng), tx, ema=ema)

    rng = jax.random.key(config.seed)
    abstract_state, state_shardings = abstract_init(init_state, mesh, rng)
    return RunSetup(mesh, task, tx, schedule, init_state, rng, abstract_state, state_shardings)


def _resume_check(
    config: ExperimentConfig, workdir: str, resume_step: int | None
) -> list[tuple[str, Any, Any]]:
    """Checks ``config`` against the run's saved ``config.json``, if there is one.

    Returns ``(key, old, new)`` for the keys changed on resume (``config_lib.SAFE_ON_RESUME``,
    and ``init_from.*`` once the run has a checkpoint of its own). Raises ConfigError listing
    every other key that differs, with both values (the saved config is left as it was), and
    when ``train.steps`` is below the step the run already reached.
    """
    if resume_step is not None and resume_step > config.train.steps:
        raise ConfigError(
            f"config.train.steps={config.train.steps}: the run in {workdir} is already at step "
            f"{resume_step}; give at least that many steps"
        )
    path = run_files.path_of(workdir, "config.json")
    if not path.is_file():
        return []
    saved = config_lib.to_dict(config_lib.load_json(path))
    problems = config_lib.resume_problems(saved, config, started=resume_step is not None)
    if problems:
        raise ConfigError(
            f"{workdir} holds a run of another config ({path}); resume it with the same "
            "config, or use a new work directory:\n  " + "\n  ".join(problems)
        )
    return config_lib.differences(saved, config)


def write_env(
    workdir: str, mesh: Mesh, config: ExperimentConfig, extra: dict[str, Any] | None = None
) -> float | None:
    """Writes ``env.json`` (with the config's fingerprint and seed, and ``extra``); returns
    the device's peak FLOP/s (None when unknown)."""
    peak = peak_flops(mesh.devices.flat[0].device_kind)
    run_files.write_json(workdir, "env.json", {
        **environment.describe(), "config_sha256": config_lib.fingerprint(config),
        "seed": config.seed, "mesh": dict(mesh.shape), "peak_flops_per_device": peak,
        "peak_flops_source": "dense bfloat16, vendor data sheet" if peak else "unknown device",
        **(extra or {}),
    })  # fmt: skip
    return peak


def train_and_evaluate(
    config: ExperimentConfig,
    workdir: str | os.PathLike,
    *,
    devices: Sequence[jax.Device] | None = None,
    progress: bool | None = None,
) -> dict[str, Any]:
    """Trains ``config`` in ``workdir`` (resuming from its newest checkpoint), evaluates, and
    returns the summary (also written to ``workdir/summary.json``).

    Args:
      config: a typed config (``jaxalign.config.load``); checked here before compiling.
      workdir: the run's directory (created).
      devices: the devices of the mesh; all of them by default.
      progress: show a progress bar; ``None``: when stderr is a terminal.

    Raises:
      UserError: a bad config or missing data (``ConfigError`` / ``MissingDataError``, naming
        the keys), a work directory that cannot be used or is locked by a live run
        (``WorkdirError``), data whose examples are all bad or checkpoints none of which reads
        (``DataError``).
      RunStopped: ``optim.max_nonfinite_in_a_row`` skipped updates in a row
        (``TrainingDivergedError``) or ``train.max_failed_saves`` failed saves in a row
        (``SavesFailedError``).
      Preempted: SIGTERM or SIGINT arrived; a checkpoint of the last step was saved.
    """
    started = time.perf_counter()
    devices = list(jax.devices() if devices is None else devices)
    if config.init_from.workdir:  # saved absolute: the run reads the same source from anywhere
        source = absolute_path(config.init_from.workdir)
        config = config_lib.override(config, [f"init_from.workdir={source}"])
    config_lib.validate(config, num_devices=len(devices))
    with (
        StopSignal() as stop,  # from here on, a signal only asks the loop to stop
        open_workdir(workdir, lead=jax.process_index() == 0) as run_dir,
    ):
        workdir = run_dir.path
        checkpointer = Checkpointer(
            run_files.path_of(workdir, "checkpoints"), keep=config.train.keep_checkpoints
        )
        try:
            changes = _resume_check(config, workdir, checkpointer.latest_step())
            return _train(config, workdir, devices, checkpointer, changes, progress, started, stop)
        finally:
            checkpointer.close()


def _train(
    config, workdir, devices, checkpointer, changes, progress, started, stop
) -> dict[str, Any]:
    """The body of ``train_and_evaluate``, once the config is known to be the run's own."""
    setup = setup_run(config, devices)
    mesh, task = setup.mesh, setup.task
    peak = write_env(workdir, mesh, config)

    # Resume order:
    #   1. the newest complete, readable checkpoint in workdir/checkpoints gives the state
    #      (restored into this mesh's shardings) and this process's data-iterator position
    #      (newer checkpoints that do not read are moved to workdir/corrupt_checkpoints/);
    #   2. without one, the state is initialised from config.seed, sharded; then the task's
    #      load_pretrained replaces what it loads from outside jaxalign (a Hugging Face BERT
    #      for mlm's model.init_from_bert); then, with config.init_from, the mapped
    #      parameters (and model state) of the saved run replace their values; the data
    #      start from the beginning of the seed's first epoch;
    #   3. rows of metrics.jsonl (and TensorBoard events) after the restored step are dropped.
    stream = task.train_stream()
    iterator: Any = None
    notes = []
    try:
        if checkpointer.latest_step() is not None:
            state, data_states, start_step, notes = checkpointer.restore(setup.abstract_state)
            iterator, note = elastic.resume(stream, data_states, jax.process_index())
            notes += [note] if note else []
        else:
            iterator = iter(stream)
            state, _ = sharded_init(
                setup.init_state, mesh, setup.rng, shardings=setup.state_shardings
            )
            start_step = 0
            state, note = _pretrained(task, state, setup)
            notes += [note] if note else []
            if config.init_from.workdir:
                state, note = _transfer(config, state, setup)
                notes.append(note)
        compiled, flops = setup.compile_step()
        meet("step compiled")  # uneven compiles meet before a collective (gloo waits 30 s)
        probe = getattr(task, "objective_probe", lambda: None)  # timed by every process
        objective_s = objective_seconds(probe()) if start_step < config.train.steps else None
        if jax.process_index() == 0:  # the run starts: the config is its own now
            config_lib.save(config, workdir)
            _record_changes(workdir, start_step, changes)
        total_steps, batch_size = config.train.steps, config.train.global_batch_size
        writer = MetricWriter(
            workdir, total_steps=total_steps, start_step=start_step, progress=progress
        )
    except BaseException:
        if iterator is not None:
            iterator.close()
        raise
    writer.log(
        f"jaxalign: {config.task} on {describe_mesh(mesh)} ({mesh.devices.flat[0].device_kind}), "
        f"global batch {batch_size}, steps {start_step} -> {total_steps}"
        + (f", resumed from checkpoint {start_step}" if start_step else "")
        + (f"; {flops / 1e9:.4g} GFLOP per device per step" if flops else "")
        + (f"; its loss alone {1e3 * objective_s:.3g} ms" if objective_s else "")
    )
    if getattr(stream, "num_records", None) is not None:
        writer.log(f"data: {stream.source_name}")
    for key, old, new in changes:
        writer.log(f"config.{key}: {old!r} -> {new!r} (changed on resume)")
    for note in notes:
        writer.log(note)
    loop = Loop(
        config=config,
        task=task,
        mesh=mesh,
        compiled=compiled,
        schedule=setup.schedule,
        iterator=iterator,
        checkpointer=checkpointer,
        writer=writer,
        throughput=Throughput(batch_size, flops, peak, objective_s),
        last_step=start_step,
        nonfinite_total=int(jax.device_get(state.nonfinite_total)),
    )
    eval_row: dict[str, Any] = {}
    stopped: str | None = None
    try:
        state, step = loop.run(state, start_step, stop)
        loop.save(step, state, iterator.get_state())  # before the evals can fail
        if step == total_steps:
            eval_row = loop.evaluate(state, step, progress)
            if jax.process_index() == 0:  # metrics.jsonl is process 0's
                report = task.report(writer.rows())
                if report:
                    loop.writer.log(
                        "report: " + ", ".join(f"{k} {v:.4g}" for k, v in report.items())
                    )
                eval_row.update(report)
        failure = checkpointer.wait()
        if failure:
            raise SavesFailedError(f"{failure}; run the same command to save it again")
    except BaseException as error:  # recorded, then raised as it was
        stopped = f"{type(error).__name__}: {error}".strip()
        raise
    finally:
        try:
            summary = _summarise(loop, stream, eval_row, stopped, started, workdir)
        finally:
            writer.close()
            iterator.close()
    return summary


def _summarise(loop, stream, eval_row, stopped, started, workdir) -> dict[str, Any]:
    """``summary.json`` however the run ended (``stopped``: None when it finished, else
    why); a summary that cannot be written (a full disk) is reported, not raised, so the
    run's own error is the one the user sees."""
    summary = {
        "step": loop.last_step,
        "stopped": stopped,
        **eval_row,
        # After an error, processes may not all reach a collective: each keeps its last figures.
        **(loop.last_data_metrics if stopped and jax.process_count() > 1 else loop.data_metrics()),
        "data/records": getattr(stream, "num_records", None),
        "nonfinite_total": loop.nonfinite_total,
        **loop.throughput.means(),  # input_wait_share, loss_share: means over the run
        "wall_s": round(time.perf_counter() - started, 1),
    }
    try:
        run_files.write_json(workdir, "summary.json", summary)
    except OSError as error:
        loop.writer.log(f"error: summary.json not written in {workdir}: {error}")
    return summary


def _transfer(
    config: ExperimentConfig, state: TrainState, setup: RunSetup
) -> tuple[TrainState, str]:
    """``state`` with ``config.init_from``'s parameters (and their moving average)."""
    params, model_state, note = load_from_run(
        config.init_from, state.params, state.model_state, setup.abstract_state
    )
    return _with_params(state.replace(model_state=model_state), params, setup), note


def _pretrained(task: Any, state: TrainState, setup: RunSetup) -> tuple[TrainState, str]:
    """``state`` with the task's ``load_pretrained`` parameters (a checkpoint from outside
    jaxalign; unchanged, with no note, for a task without one)."""
    load = getattr(task, "load_pretrained", None)  # a task may lack the default
    if load is None:
        return state, ""
    params, note = load(state.params)
    if not note:
        return state, ""
    params = jax.tree.map(  # host arrays where the task loaded them: into the state's shardings
        lambda x, s: jax.device_put(x, s), params, setup.state_shardings.params
    )
    return _with_params(state, params, setup), note


def _with_params(state: TrainState, params: Any, setup: RunSetup) -> TrainState:
    """``state`` with these parameters, and its moving average (if any) reset to them."""
    ema = state.ema_params
    if ema is not None:
        ema = jax.tree.map(
            lambda x, s: jax.device_put(x, s, may_alias=False),
            params,
            setup.state_shardings.ema_params,
        )
    return state.replace(params=params, ema_params=ema)


def evaluate_workdir(
    workdir: str | os.PathLike, *, progress: bool | None = None, config_file: str | None = None
) -> dict:
    """Re-runs the task's evals from the newest checkpoint of a run, reading only what the
    evals use (parameters, model state, moving average; never the optimizer state); returns
    the metrics (also written to ``workdir/eval.json`` when the directory is writable).
    ``config_file`` is run first, for a task that file defines
    (``"tests/tasks/test_protocol.py"``)."""
    if config_file:
        config_lib.import_config_file(config_file)
    workdir = absolute_path(workdir)
    path = run_files.path_of(workdir, "config.json")
    if not path.is_file():
        raise WorkdirError(f"--workdir={workdir}: not a jaxalign run (no {path})")
    config = config_lib.load_json(path)
    devices = jax.devices()
    config_lib.validate(config, num_devices=len(devices))
    setup = setup_run(config, devices)
    abstract = setup.abstract_state
    checkpointer = Checkpointer(
        run_files.path_of(workdir, "checkpoints"),
        keep=config.train.keep_checkpoints,
        read_only=True,  # the run may still be writing there
    )
    try:
        part, step = checkpointer.restore_part(
            {
                "params": abstract.params,
                "model_state": abstract.model_state,
                "ema_params": abstract.ema_params,
            }
        )
        for note in checkpointer.skipped:
            print(f"note: {note}", file=sys.stderr)
    finally:
        checkpointer.close()
    state = TrainState(
        step=step,
        params=part["params"],
        model_state=part["model_state"],
        opt_state=None,
        ema_params=part["ema_params"],
        nonfinite_in_a_row=0,
        nonfinite_total=0,
    )
    results = setup.task.evaluate(state.eval_variables(), progress=bool(progress))
    out = {"step": step, **{f"eval/{k}": v for k, v in results.items()}}
    eval_images = getattr(setup.task, "eval_images", None)
    try:
        run_files.write_json(workdir, "eval.json", out)
        if eval_images is not None:
            pictures = eval_images(state.eval_variables())  # on every process: it may compute
            if jax.process_index() == 0:
                save_pngs(workdir, step, pictures)
    except OSError as error:  # a read-only run: the figures are still returned (and printed)
        print(f"note: eval.json not written in {workdir} ({error.strerror})", file=sys.stderr)
    return out
