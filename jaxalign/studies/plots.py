"""Pictures (PNG, matplotlib's object API: no display, no global figure state) of one run and of
a study.

- ``run_curves(RUN)`` (``jaxalign plot --workdir=RUN``): ``RUN/curves.png``, one panel each for
  the training loss, the learning rate, the throughput (when ``metrics.jsonl`` has it: not with
  ``train.timing_in_metrics=False``) and every eval figure, against the step.
- ``study_plots(study, DIR)`` (after each ``jaxalign study``): ``DIR/learning_curves.png``, each
  of the study's ``curves`` keys against the step, one line per cell (the mean over its seeds)
  in a band from the lowest to the highest seed, one panel per task when the study has a
  ``task_axis``; and ``DIR/metric_<n>.png`` per metric, one panel per axis: the metric at each
  of the axis's values, one series per combination of the other axes' values, each seed a dot
  and the mean with its 95% Student t interval.
"""

from __future__ import annotations

import math
import os
import re
import textwrap
from collections.abc import Sequence
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from jaxalign.studies import statistics as st
from jaxalign.studies.report import collect, label_of
from jaxalign.studies.study import Study, expand, run_dir, state_of
from jaxalign.train_lib.metric_writers import read_metrics

RUN_PANELS = (("loss", "training loss"), ("lr", "learning rate"), ("examples_per_s", "examples/s"))
MAX_EVAL_PANELS = 12


def _series(rows: Sequence[dict[str, Any]], key: str) -> tuple[np.ndarray, np.ndarray]:
    """``(steps, values)`` of the rows holding ``key`` (``"nan"`` as NaN)."""
    pairs = [(r["step"], float(r[key])) for r in rows if isinstance(r.get(key), (int, float, str))]
    steps, values = zip(*pairs, strict=True) if pairs else ((), ())
    return np.asarray(steps, np.int64), np.asarray(values, np.float64)


def _grid(count: int, columns: int = 3) -> tuple[Figure, list[Any]]:
    """A figure of ``count`` panels, ``columns`` to a row."""
    columns = min(columns, count)
    rows = math.ceil(count / columns)
    figure = Figure(figsize=(4.4 * columns, 3.2 * rows), layout="constrained")
    axes = figure.subplots(rows, columns, squeeze=False).ravel()
    for extra in axes[count:]:
        extra.set_visible(False)
    return figure, list(axes[:count])


def run_curves(workdir: str | os.PathLike, name: str = "curves.png") -> str:
    """Draws one run's ``metrics.jsonl`` into ``workdir/name``; returns its path.

    Raises:
      ValueError: naming the file, when it holds no training rows.
    """
    rows = read_metrics(workdir)
    if not any("loss" in r for r in rows):
        raise ValueError(f"{workdir}/metrics.jsonl has no training rows to draw")
    keys = [(k, title) for k, title in RUN_PANELS if any(k in r for r in rows)]
    evals = sorted({k for r in rows for k in r if k.startswith("eval/") and "chance" not in k})
    keys += [(k, k.removeprefix("eval/")) for k in evals[:MAX_EVAL_PANELS]]
    figure, axes = _grid(len(keys))
    for ax, (key, title) in zip(axes, keys, strict=True):
        steps, values = _series(rows, key)
        ax.plot(steps, values, marker="o" if key.startswith("eval/") else None, markersize=3)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    if len(evals) > MAX_EVAL_PANELS:
        figure.suptitle(f"{len(evals) - MAX_EVAL_PANELS} more eval figures in metrics.jsonl")
    path = os.path.join(os.fspath(workdir), name)
    figure.savefig(path, dpi=110)
    return path


def _task_of(study: Study, cell: str) -> tuple[str, str]:
    """``(task value or "", the cell without the task axis)``."""
    parts = dict(p.split("=", 1) for p in cell.split(","))
    task = parts.pop(study.task_axis, "") if study.task_axis else ""
    return task, ",".join(f"{a}={v}" for a, v in parts.items()) or "all"


def learning_curves(study: Study, workdir: str) -> str | None:
    """``DIR/learning_curves.png`` of the finished runs (None when none is finished)."""
    curves: dict[tuple[str, str], dict[str, list[tuple[np.ndarray, np.ndarray]]]] = {}
    for run in expand(study):
        path = run_dir(workdir, run)
        if state_of(path) != "done":
            continue
        rows = read_metrics(path)
        for key in study.curves:
            curves.setdefault((key, _task_of(study, run.cell)[0]), {}).setdefault(
                _task_of(study, run.cell)[1], []
            ).append(_series(rows, key))
    if not curves:
        return None
    tasks = list(study.axes[study.task_axis]) if study.task_axis else [""]
    panels = [(key, task) for key in study.curves for task in tasks]
    figure, axes = _grid(len(panels), columns=max(len(tasks), 2 if len(panels) > 1 else 1))
    for ax, (key, task) in zip(axes, panels, strict=True):
        for group, seeds in curves.get((key, task), {}).items():
            steps = seeds[0][0]
            if any(len(s) != len(steps) or (s != steps).any() for s, _ in seeds):
                continue  # seeds logged at other steps (a changed config): not averaged
            values = np.stack([v for _, v in seeds])  # [seeds, steps]
            (line,) = ax.plot(steps, values.mean(0), label=f"{group} ({len(seeds)} seeds)")
            ax.fill_between(steps, values.min(0), values.max(0), color=line.get_color(), alpha=0.2)
        ax.set_title(f"{key}" + (f", {study.task_axis}={task}" if task else ""), fontsize=10)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    figure.suptitle("mean over seeds; band: lowest to highest seed", fontsize=9)
    path = os.path.join(workdir, "learning_curves.png")
    figure.savefig(path, dpi=110)
    return path


def metric_plot(study: Study, workdir: str, metric: dict[str, Any], path: str) -> str | None:
    """``path``: the metric against each axis's values (None when no cell is finished)."""
    values, _ = collect(study, workdir)
    if not values:
        return None
    axes_names = list(study.axes)
    figure, panels = _grid(len(axes_names), columns=2)
    for ax, axis in zip(panels, axes_names, strict=True):
        ticks = list(study.axes[axis])
        others = list(dict.fromkeys(_without(c, axis) for c in study.cells))
        width = 0.7 / max(len(others), 1)
        for n, other in enumerate(others):
            offset = (n - (len(others) - 1) / 2) * width
            for x, tick in enumerate(ticks):
                cell = _cell(study, other, axis, tick)
                seeds = values.get(cell, {}).get(metric["key"], [])
                if not seeds:
                    continue
                summary = st.summarize(seeds)
                color = f"C{n % 10}"
                ax.scatter([x + offset] * len(seeds), seeds, s=9, color=color, alpha=0.35)
                low, high = summary.interval.low, summary.interval.high
                yerr = None if math.isnan(low) else [[summary.mean - low], [high - summary.mean]]
                ax.errorbar(x + offset, summary.mean, yerr=yerr, fmt="o", color=color,
                            capsize=3, label=(other or "all") if x == 0 else None)  # fmt: skip
        ax.set_xticks(range(len(ticks)), ticks, rotation=20 if len(ticks) > 3 else 0)
        ax.set_xlabel(axis)
        ax.set_ylabel(textwrap.fill(label_of(metric), 34), fontsize=8)
        ax.grid(alpha=0.3, axis="y")
        if len(others) > 1:
            ax.legend(fontsize=7)
    figure.suptitle(f"{label_of(metric)}\neach seed (dots), mean and 95% t interval", fontsize=9)
    figure.savefig(path, dpi=110)
    return path


def _without(cell: str, axis: str) -> str:
    return ",".join(p for p in cell.split(",") if not p.startswith(f"{axis}="))


def _cell(study: Study, other: str, axis: str, value: str) -> str:
    """The cell of ``other``'s values and ``axis=value``, in the study's axis order."""
    chosen = dict(p.split("=", 1) for p in other.split(",") if p) | {axis: value}
    return ",".join(f"{a}={chosen[a]}" for a in study.axes)


def study_plots(study: Study, workdir: str) -> list[str]:
    """Every picture of the study's finished runs (see the module docstring); their paths."""
    paths = [learning_curves(study, workdir)]
    for n, metric in enumerate(study.metrics):
        slug = re.sub(r"[^A-Za-z0-9]+", "_", metric["key"]).strip("_")
        path = os.path.join(workdir, f"metric_{n}_{slug}.png")
        paths.append(metric_plot(study, workdir, metric, path))
    return [p for p in paths if p]
