"""Several seeds of one config trained as one compiled program: the seed is a ``jax.vmap``ped
axis of the parameters, the optimizer state, the batches (each seed's own data order) and the
step's random key. For models small enough that one device holds a copy per seed, where a
study's cells are many short runs and each run alone leaves the device (or the CPU's cores)
half idle.

``train_seeds(configs, workdirs)`` trains ``configs`` (equal but for ``seed``) on one device
and writes each seed's work directory as ``jaxalign train`` would on one device:
``config.json``, ``env.json`` (with ``seed_bundle``: the seeds trained together),
``metrics.jsonl`` (the same rows: each seed's step metrics, learning rate, data counts and
evals; wall-clock figures go to the log only), ``summary.json`` (the task's report, e.g.
model selection, from those rows). Every seed's step is the one ``train_lib.step.train_step``
computes for it alone (its key ``fold_in(key(seed), step)``), so its losses are a separate
run's up to float rounding (``tests/studies/test_seed_bundle.py``).

What a bundle does not do: checkpoints (a bundle stopped midway trains again from step 0; its
rows are replaced), ``init_from`` or a task's ``load_pretrained`` (refused), several devices.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxalign import config as config_lib
from jaxalign import train
from jaxalign.parallel.sharding import activation_context, sharded_initializer
from jaxalign.schema import ConfigError, ExperimentConfig
from jaxalign.train_lib import run_files
from jaxalign.train_lib.loop import TrainingDivergedError, summed_counts
from jaxalign.train_lib.metric_writers import MetricWriter
from jaxalign.train_lib.step import train_step
from jaxalign.train_lib.workdir import open_workdir


def check_bundle(configs: Sequence[ExperimentConfig]) -> None:
    """Raises ConfigError unless ``configs`` are at least one, equal but for distinct seeds,
    and start from their seed's init."""
    if not configs:
        raise ConfigError("a seed bundle needs at least one config")
    seeds = [c.seed for c in configs]
    if len(set(seeds)) != len(seeds):
        raise ConfigError(f"a seed bundle's seeds must be distinct; got {seeds}")
    for config in configs[1:]:
        keys = [k for k, _, _ in config_lib.differences(configs[0], config) if k != "seed"]
        if keys:
            raise ConfigError(f"a seed bundle's configs differ beyond the seed: {keys}")
    if configs[0].init_from.workdir:
        raise ConfigError(
            f"config.init_from.workdir={configs[0].init_from.workdir!r}: a seed bundle starts "
            "from each seed's init; train these runs one by one"
        )


def _stack(trees: Sequence[Any]) -> Any:
    """``[seeds, ...]`` leaves from equal-structured trees."""
    return jax.tree.map(lambda *xs: np.stack([np.asarray(x) for x in xs]), *trees)


def _init(setups: Sequence[train.RunSetup]) -> Any:
    """Each seed's initial train state (the program its own run compiles, compiled once here
    for all seeds), stacked on a seed axis."""
    first = setups[0]
    init = sharded_initializer(first.init_state, first.state_shardings)
    states = []
    for setup in setups:
        with jax.set_mesh(first.mesh):
            state = init(setup.rng)
        load = getattr(setup.task, "load_pretrained", None)
        if load is not None and load(state.params)[1]:
            raise ConfigError(
                f"config.task={setup.task.config.task}: this config loads pretrained weights; "
                "a seed bundle starts from each seed's init: train these runs one by one"
            )
        states.append(state)
    return jax.tree.map(jnp.asarray, _stack(states))


def _bundled_step(setup: train.RunSetup) -> Callable[..., Any]:
    """``(states [S, ...], batches [S, B, ...], seeds [S]) -> (states, metrics [S])``,
    jitted, the states donated."""
    task, config = setup.task, setup.task.config

    def one(state, batch, seed):
        return train_step(
            task.loss_and_grad, setup.tx, state, batch, seed=seed,
            ema_decay=config.optim.ema_decay,
        )  # fmt: skip

    return jax.jit(jax.vmap(one), donate_argnums=(0,))


def train_seeds(
    configs: Sequence[ExperimentConfig],
    workdirs: Sequence[str],
    *,
    log: Callable[[str], None] = print,
) -> list[dict[str, Any]]:
    """Trains ``configs`` (equal but for the seed) together on one device, writing
    ``workdirs[i]`` for ``configs[i]`` (see the module docstring); returns their summaries.

    Raises:
      ConfigError: configs that differ beyond the seed, or that start from saved weights.
      TrainingDivergedError: a seed's ``optim.max_nonfinite_in_a_row`` skipped updates.
    """
    check_bundle(configs)
    if len(workdirs) != len(configs):
        raise ValueError(f"{len(configs)} configs but {len(workdirs)} work directories")
    started = time.perf_counter()
    devices = jax.devices()[:1]
    for config in configs:
        config_lib.validate(config, num_devices=1)
    with contextlib.ExitStack() as stack:
        paths = [stack.enter_context(open_workdir(w)).path for w in workdirs]
        setups = [train.setup_run(config, devices) for config in configs]
        seeds = [config.seed for config in configs]
        for config, setup, path in zip(configs, setups, paths, strict=True):
            config_lib.save(config, path)
            train.write_env(path, setup.mesh, config, extra={"seed_bundle": seeds})
        streams = [setup.task.train_stream() for setup in setups]
        iterators = [iter(stream) for stream in streams]
        stack.callback(lambda: [it.close() for it in iterators])
        writers = [
            stack.enter_context(contextlib.closing(
                MetricWriter(p, total_steps=configs[0].train.steps, start_step=0, progress=False)
            ))
            for p in paths
        ]  # fmt: skip
        with activation_context(setups[0].mesh):
            eval_rows, nonfinite = _loop(configs[0], setups, iterators, writers, seeds, log)
        summaries = []
        for n, (setup, writer) in enumerate(zip(setups, writers, strict=True)):
            summary = {
                "step": configs[0].train.steps, "stopped": None, **eval_rows[n],
                **setup.task.report(writer.rows()), **_counts(iterators[n]),
                "data/records": getattr(streams[n], "num_records", None),
                "nonfinite_total": nonfinite[n], "seed_bundle": seeds,
                "wall_s": round(time.perf_counter() - started, 1),
            }  # fmt: skip
            run_files.write_json(paths[n], "summary.json", summary)
            summaries.append(summary)
    return summaries


def _counts(iterator: Any) -> dict[str, Any]:
    method = getattr(iterator, "metrics", None)
    return summed_counts([method()]) if callable(method) else {}


def _loop(config, setups, iterators, writers, seeds, log) -> tuple[list[dict], list[int]]:
    """Steps 1 -> ``train.steps`` of every seed; logs and evaluates as ``jaxalign train``
    does; returns each seed's last eval row and its count of skipped non-finite updates.

    As in ``train_lib.loop``, a step's metrics are read back after the next step is
    dispatched, so the host reads the next batches while the device computes."""
    total, train_config = config.train.steps, config.train
    step_fn, schedule = _bundled_step(setups[0]), setups[0].schedule
    state = _init(setups)
    seeds_array = jnp.asarray(seeds)
    eval_rows: list[dict[str, Any]] = [{} for _ in setups]
    clock, nonfinite = time.perf_counter(), [0 for _ in seeds]

    def finish(step: int, metrics: dict[str, jax.Array]) -> None:
        metrics = jax.device_get(metrics)
        nonfinite[:] = [int(x) for x in metrics["nonfinite_total"]]
        streaks = metrics.pop("nonfinite_in_a_row")
        if streaks.max() >= config.optim.max_nonfinite_in_a_row:
            bad = [s for s, n in zip(seeds, streaks, strict=True) if n == streaks.max()]
            raise TrainingDivergedError(
                f"step {step}: seeds {bad} had {streaks.max()} non-finite updates in a row "
                f"(config.optim.max_nonfinite_in_a_row={config.optim.max_nonfinite_in_a_row})"
            )
        if step % train_config.log_every == 0 or step == total:
            for n, (writer, iterator) in enumerate(zip(writers, iterators, strict=True)):
                row = {k: v[n] for k, v in metrics.items()}
                applied = step - 1 - (int(row["nonfinite_total"]) - int(row["skipped"]))
                writer.write(step, {**row, "lr": schedule(applied), **_counts(iterator)})
            examples = step * len(seeds) * train_config.global_batch_size
            rate = examples / (time.perf_counter() - clock)
            losses = " ".join(f"{float(x):.5g}" for x in metrics["loss"])
            log(f"seeds {seeds} step {step}: loss {losses}; {rate:.1f} examples/s in all")

    pending = None
    for step in range(1, total + 1):
        batch = _stack([next(it) for it in iterators])
        state, metrics = step_fn(state, batch, seeds_array)
        if pending is not None:
            finish(*pending)
        pending = (step, metrics)
        if step % train_config.eval_every == 0 or step == total:
            finish(*pending)
            pending = None
            variables = state.eval_variables()
            for n, (setup, writer) in enumerate(zip(setups, writers, strict=True)):
                mine = jax.tree.map(lambda x, n=n: x[n], variables)
                results = setup.task.evaluate(mine, progress=False)
                eval_rows[n] = {f"eval/{k}": v for k, v in results.items()}
                if eval_rows[n]:
                    writer.write(step, eval_rows[n])
    return eval_rows, nonfinite
