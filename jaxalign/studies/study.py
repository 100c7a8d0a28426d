"""A study: one base config x a grid of named override axes x seeds, each run in its own work
directory, run one after another; resumable and failure-tolerant.

A study file (``configs/studies/*.py``) defines ``get_study()``, returning a dict (or an
``ml_collections.ConfigDict``) with:

- ``base``: the config spec every run starts from (``"configs/adapt_digits.py:tiny"``; a
  relative path is read from the current directory, as ``--config`` is);
- ``overrides``: ``"KEY=VALUE"`` strings for every run;
- ``axes``: ``{axis: {value name: ("KEY=VALUE", ...)}}``; a cell is one value name per axis;
- ``seeds``: the seeds each cell runs with (``seed=<s>`` is added last);
- ``metrics``: ``({"key": <summary.json key>, "label": ..., "oracle": bool}, ...)``; an oracle
  figure (selected or measured on target labels) is marked as such in the report;
- ``baseline``: the cell the others are compared with (``"axis=value,..."``), or ``""``;
- ``task_axis``: optional, an axis whose values are tasks (domain pairs, datasets): the report
  then compares the other axes' cells across them (``report``);
- ``curves``: optional, the ``metrics.jsonl`` keys drawn against the step in
  ``learning_curves.png`` (``plots``; ``("loss",)`` by default);
- ``vmap_seeds``: optional, train the pending seeds of each cell together as one compiled
  program (``seed_bundle``: one device, no checkpoints; for small models), each still
  written to its own run directory; False by default.

Layout of ``--workdir=DIR``: ``DIR/runs/<hash>/`` is one run's work directory, named by the
first 12 hex digits of its resolved config's SHA-256 (``config.fingerprint``, which the run's
``env.json`` records whole);
``DIR/runs/<hash>.json`` records its cell, seed and overrides, ``DIR/runs/<hash>.error.json``
why it failed; ``DIR/names/<cell>/seed_<s>`` links to it by a readable name. A run counts as
done when its ``summary.json`` says it was not stopped, running while a live process holds its
work-directory lock, failed while its error file is there, else pending.
Running the study again trains the pending runs (a run with checkpoints resumes from them) and
leaves done and failed ones alone (``retry_failed`` retries the failed).
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import fcntl
import itertools
import json
import os
import shlex
import signal
import subprocess
import sys
import traceback
from collections.abc import Callable, Sequence
from typing import Any

from jaxalign import config as config_lib

STATES = ("done", "running", "failed", "pending")


@dataclasses.dataclass(frozen=True)
class Run:
    """One cell x seed: its overrides on the base config and its directory name."""

    cell: str  # "axis=value,axis=value" in the order of the axes
    seed: int
    overrides: tuple[str, ...]
    hash: str


@dataclasses.dataclass(frozen=True)
class Study:
    """A loaded study file (see the module docstring for the keys)."""

    base: str
    overrides: tuple[str, ...]
    axes: dict[str, dict[str, tuple[str, ...]]]
    seeds: tuple[int, ...]
    metrics: tuple[dict[str, Any], ...]
    baseline: str
    task_axis: str = ""
    curves: tuple[str, ...] = ("loss",)
    vmap_seeds: bool = False

    @property
    def cells(self) -> list[str]:
        """Every cell name, the last axis varying fastest."""
        names = [""]
        for axis, values in self.axes.items():
            names = [f"{n},{axis}={v}".lstrip(",") for n in names for v in values]
        return names

    def cell_overrides(self, cell: str) -> tuple[str, ...]:
        chosen = dict(part.split("=", 1) for part in cell.split(",") if part)
        return tuple(o for axis, value in chosen.items() for o in self.axes[axis][value])


def load_study(path: str) -> Study:
    """The study file ``path`` -> ``Study``; raises ValueError naming the file and the key."""
    module, _ = config_lib.import_config_file(path)
    if not hasattr(module, "get_study"):
        raise ValueError(f"{path}: a study file defines get_study()")
    raw = module.get_study()
    missing = [k for k in ("base", "axes", "seeds", "metrics") if k not in raw]
    if missing:
        raise ValueError(f"{path}: get_study() has no {missing}")
    axes = {
        str(axis): {str(name): tuple(map(str, overrides)) for name, overrides in values.items()}
        for axis, values in dict(raw["axes"]).items()
    }
    for axis, values in axes.items():
        if not values or any("," in n or "=" in n for n in values):
            raise ValueError(f"{path}: axes.{axis} needs value names without ',' or '='")
    seeds = tuple(int(s) for s in raw["seeds"])
    if not seeds or len(set(seeds)) != len(seeds):
        raise ValueError(f"{path}: seeds must be distinct and at least one; got {seeds}")
    metrics = tuple(dict(m) for m in raw["metrics"])
    for m in metrics:
        if "key" not in m:
            raise ValueError(f"{path}: every metric needs a 'key' (a summary.json key): {m}")
        m.setdefault("label", m["key"])
        m.setdefault("oracle", False)
    study = Study(
        base=str(raw["base"]),
        overrides=tuple(map(str, raw.get("overrides", ()))),
        axes=axes,
        seeds=seeds,
        metrics=metrics,
        baseline=str(raw.get("baseline", "") or ""),
        task_axis=str(raw.get("task_axis", "") or ""),
        curves=tuple(map(str, raw.get("curves", ("loss",)))),
        vmap_seeds=bool(raw.get("vmap_seeds", False)),
    )
    if study.task_axis and study.task_axis not in axes:
        raise ValueError(f"{path}: task_axis {study.task_axis!r} is not an axis: {list(axes)}")
    if study.baseline and study.baseline not in study.cells:
        raise ValueError(f"{path}: baseline {study.baseline!r} is not a cell of {study.cells}")
    return study


def expand(study: Study) -> list[Run]:
    """Every cell x seed, each with its resolved config's hash (validated: a bad override
    raises here, naming the key, before anything runs)."""
    runs = []
    for cell in study.cells:
        for seed in study.seeds:
            overrides = (*study.overrides, *study.cell_overrides(cell), f"seed={seed}")
            digest = config_lib.fingerprint(config_lib.load(study.base, overrides))[:12]
            runs.append(Run(cell, seed, overrides, digest))
    return runs


def run_dir(workdir: str, run: Run) -> str:
    return os.path.join(workdir, "runs", run.hash)


def state_of(path: str) -> str:
    """``done``, ``running``, ``failed`` or ``pending`` (see the module docstring)."""
    summary = os.path.join(path, "summary.json")
    if os.path.isfile(summary):
        with open(summary) as f:
            if json.load(f).get("stopped") is None:
                return "done"
    if _locked(os.path.join(path, "jaxalign-run.lock")):
        return "running"
    if os.path.isfile(path + ".error.json"):
        return "failed"
    return "pending"


def _locked(lock_path: str) -> bool:
    """Whether a live process holds the run's work-directory lock (``train_lib.workdir``)."""
    if not os.path.isfile(lock_path):
        return False
    with open(lock_path) as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            return True
        fcntl.flock(f, fcntl.LOCK_UN)
    return False


def status(study: Study, workdir: str) -> dict[str, list[Run]]:
    """The study's runs by state (``STATES``)."""
    by_state: dict[str, list[Run]] = {s: [] for s in STATES}
    for run in expand(study):
        by_state[state_of(run_dir(workdir, run))].append(run)
    return by_state


def _prepare(workdir: str, run: Run) -> str:
    """The run's record (``runs/<hash>.json``) and readable-name link; its directory's path
    (left for the trainer to create)."""
    path = run_dir(workdir, run)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path + ".json", "w") as f:
        json.dump(dataclasses.asdict(run), f, indent=2)
    link = os.path.join(workdir, "names", run.cell.replace("/", "_"), f"seed_{run.seed}")
    os.makedirs(os.path.dirname(link), exist_ok=True)
    if not os.path.lexists(link):
        os.symlink(os.path.relpath(path, os.path.dirname(link)), link)
    return path


def run_study(
    study: Study,
    workdir: str,
    train: Callable[[Any, str], dict[str, Any]],
    *,
    train_seeds: Callable[[list[Any], list[str]], Any] | None = None,
    jobs: int = 1,
    retry_failed: bool = False,
    log: Callable[[str], None] = print,
) -> dict[str, list[Run]]:
    """Trains every pending run (and failed ones with ``retry_failed``): one after another
    with ``train(config, run_dir)`` (``jaxalign.train.train_and_evaluate``); with ``jobs > 1``,
    that many at a time, each a ``jaxalign train`` process (its output in
    ``runs/<hash>.log``); with the study's ``vmap_seeds``, each cell's pending seeds together
    with ``train_seeds(configs, run_dirs)`` (``seed_bundle.train_seeds``). A run that fails
    gets ``runs/<hash>.error.json`` (type, message, traceback; every seed of a bundle that
    raises) and the study goes on. Returns the final status. ``KeyboardInterrupt`` and the
    trainer's SIGTERM stop (``Preempted``) end the study."""
    from jaxalign.train_lib.loop import Preempted

    if jobs < 1 or (jobs > 1 and study.vmap_seeds):
        raise ValueError(f"jobs={jobs}: at least 1, and 1 with vmap_seeds (one program a cell)")
    runs = expand(study)
    todo = [r for r in runs if state_of(run_dir(workdir, r)) in (
        ("pending", "failed") if retry_failed else ("pending",))]  # fmt: skip
    log(f"study: {len(runs)} runs, {len(todo)} to train, in {workdir}")
    bundled = study.vmap_seeds and train_seeds is not None
    groups = [[r for r in todo if r.cell == c] for c in dict.fromkeys(r.cell for r in todo)]
    if not bundled:
        groups = [[r] for r in todo]
    starts = list(itertools.accumulate([0, *map(len, groups)]))

    def attempt(number: int, group: list[Run]) -> None:
        paths = [_prepare(workdir, run) for run in group]
        for path in paths:
            if os.path.exists(path + ".error.json"):
                os.remove(path + ".error.json")
        first, last = starts[number] + 1, starts[number + 1]
        names = ", ".join(f"seed {r.seed} -> runs/{r.hash}" for r in group)
        which = f"run {last}" if first == last else f"runs {first}-{last}"
        together = " (one program)" if len(group) > 1 else ""
        log(f"study: {which}/{len(todo)}: {group[0].cell}{together}: {names}")
        try:
            if jobs > 1:
                _train_process(study, group[0], paths[0])
            else:
                configs = [config_lib.load(study.base, run.overrides) for run in group]
                if bundled:
                    train_seeds(configs, paths)
                else:
                    train(configs[0], paths[0])
        except (KeyboardInterrupt, Preempted):
            raise
        except Exception as failure:  # any failure of one run: recorded, the study goes on
            for path in paths:
                with open(path + ".error.json", "w") as f:
                    json.dump({"type": type(failure).__name__, "message": str(failure),
                               "traceback": traceback.format_exc()}, f, indent=2)  # fmt: skip
            seeds = [r.seed for r in group]
            log(f"study: {group[0].cell} seeds {seeds} failed: {type(failure).__name__}: {failure}")

    if jobs == 1:
        for number, group in enumerate(groups):
            attempt(number, group)
    else:
        with concurrent.futures.ThreadPoolExecutor(jobs) as pool:
            futures = [pool.submit(attempt, n, g) for n, g in enumerate(groups)]
            try:
                for future in futures:
                    future.result()  # a stop (Preempted, Ctrl-C) in any run ends the study
            except BaseException:
                pool.shutdown(wait=True, cancel_futures=True)  # no queued run starts
                raise
    return status(study, workdir)


class RunFailed(Exception):
    """A ``jaxalign train`` process of the study exited with an error."""


def train_words(study: Study, run: Run, path: str) -> list[str]:
    """The ``jaxalign train`` command line of ``run`` in ``path``, as words."""
    words = ["jaxalign", "train", f"--config={study.base}", f"--workdir={path}"]
    return words + [f"--config.{o}" for o in run.overrides]


def _train_process(study: Study, run: Run, path: str) -> None:
    """Trains ``run`` in a ``python -m jaxalign train`` process, its output in ``path.log``;
    raises ``RunFailed`` (the exit status and the log from its last ``error:`` line) when it
    fails, ``Preempted`` when it was stopped by a signal after saving."""
    from jaxalign.train_lib.loop import Preempted
    from jaxalign.train_lib.preemption import PREEMPTED_EXIT_CODE

    command = [sys.executable, "-m", *train_words(study, run, path)]  # -m jaxalign train ...
    with open(path + ".log", "w") as out:
        code = subprocess.run(command, stdout=out, stderr=subprocess.STDOUT, check=False).returncode
    if code in (PREEMPTED_EXIT_CODE, 130, -signal.SIGINT, -signal.SIGTERM):
        raise Preempted(0, f"a signal (exit status {code})", f"see {path}.log")
    if code:
        with open(path + ".log") as f:
            lines = [line.strip() for line in f if line.strip()]
        errors = [n for n, line in enumerate(lines) if line.startswith("error:")]
        said = " ".join(lines[errors[-1] if errors else -1 :]) if lines else "no output"
        raise RunFailed(f"exit status {code}: {said} ({path}.log)")


def launch_commands(study: Study, workdir: str, launcher: Sequence[str] = ()) -> list[str]:
    """One ``jaxalign train`` command line per run that is not done, after ``launcher`` (e.g.
    ``("launch/local.sh", "2", "--")``), for a cluster to run them in parallel."""
    lines = []
    for run in expand(study):
        path = run_dir(workdir, run)
        if state_of(path) == "done":
            continue
        lines.append(shlex.join([*launcher, *train_words(study, run, path)]))
    return lines
