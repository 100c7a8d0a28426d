"""A study's report from its finished runs: ``report.md``, ``results.csv`` and ``results.tex``
in the study's directory, one row per cell and metric: mean, standard deviation, number of
seeds and the mean's 95% Student t interval (``statistics.mean_interval``), with the runs it
came from. Cells whose runs failed are listed with their errors; a metric marked ``oracle``
(chosen or measured with target labels) says so in its label.

With the study's ``task_axis`` (an axis whose values are tasks, e.g. domain pairs), the other
axes' cells are also compared across tasks: the interquartile mean over every (seed, task)
score and the probability of improving on the baseline, each with a stratified bootstrap
interval (``statistics``).
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from jaxalign.studies import statistics as st
from jaxalign.studies.study import Study, expand, run_dir, state_of


def collect(study: Study, workdir: str) -> tuple[dict[str, dict[str, list[float]]], dict]:
    """``({cell: {metric key: [value per finished seed]}}, {cell: {"runs": [...], "errors":
    [...]}})``; a finished run without a metric key raises ValueError naming both."""
    values: dict[str, dict[str, list[float]]] = {}
    runs: dict[str, dict[str, list[str]]] = {}
    for run in expand(study):
        path = run_dir(workdir, run)
        info = runs.setdefault(run.cell, {"runs": [], "errors": []})
        state = state_of(path)
        if state == "failed":
            with open(path + ".error.json") as f:
                error = json.load(f)
            info["errors"].append(f"seed {run.seed}: {error['type']}: {error['message']}")
        if state != "done":
            continue
        info["runs"].append(os.path.join("runs", run.hash))
        with open(os.path.join(path, "summary.json")) as f:
            summary = json.load(f)
        for metric in study.metrics:
            if metric["key"] not in summary:
                raise ValueError(f"{path}/summary.json has no {metric['key']!r} (study metric)")
            values.setdefault(run.cell, {}).setdefault(metric["key"], []).append(
                float(summary[metric["key"]])
            )
    return values, runs


def label_of(metric: dict[str, Any]) -> str:
    return metric["label"] + (" (oracle: target labels)" if metric["oracle"] else "")


def rows(study: Study, workdir: str) -> tuple[list[dict[str, Any]], dict]:
    """One row per finished cell and metric (the CSV's columns), and the runs by cell."""
    values, runs = collect(study, workdir)
    out = []
    for cell in study.cells:
        for metric in study.metrics:
            seeds = values.get(cell, {}).get(metric["key"])
            if not seeds:
                continue
            summary = st.summarize(seeds)
            out.append({
                "cell": cell, "metric": label_of(metric), "mean": summary.mean,
                "std": summary.std, "n": summary.n, "ci_low": summary.interval.low,
                "ci_high": summary.interval.high, "ci_method": "95% Student t",
                "runs": " ".join(runs[cell]["runs"]),
            })  # fmt: skip
    return out, runs


def aggregates(study: Study, workdir: str, task_axis: str) -> list[dict[str, Any]]:
    """Per group of cells (every axis but ``task_axis``) and metric: IQM over ``[seeds,
    tasks]`` and, against the baseline's group, the probability of improvement; each with a
    95% stratified bootstrap interval. Groups missing a task or seeds are left out."""
    if task_axis not in study.axes:
        raise ValueError(f"task_axis {task_axis!r} is not an axis of the study {list(study.axes)}")
    values, _ = collect(study, workdir)
    tasks = list(study.axes[task_axis])

    def group_of(cell: str) -> str:
        return ",".join(p for p in cell.split(",") if not p.startswith(f"{task_axis}="))

    groups = list(dict.fromkeys(group_of(c) for c in study.cells))
    baseline = group_of(study.baseline) if study.baseline else None
    out = []
    for metric in study.metrics:
        matrices = {}
        for group in groups:
            cells = [c for c in study.cells if group_of(c) == group]
            columns = [values.get(c, {}).get(metric["key"], []) for c in cells]
            if len(columns) == len(tasks) and len({len(c) for c in columns}) == 1 and columns[0]:
                matrices[group] = np.array(columns).T  # [seeds, tasks]
        for group, scores in matrices.items():
            iqm = st.stratified_bootstrap_interval(st.interquartile_mean, scores)
            row = {"group": group, "metric": label_of(metric), "iqm": st.interquartile_mean(scores),
                   "iqm_low": iqm.low, "iqm_high": iqm.high}  # fmt: skip
            if baseline in matrices and group != baseline:
                base = matrices[baseline]
                p = st.stratified_bootstrap_interval(st.probability_of_improvement, scores, base)
                row.update(p_improve=st.probability_of_improvement(scores, base),
                           p_low=p.low, p_high=p.high)  # fmt: skip
            out.append(row)
    return out


PROVENANCE_KEYS = ("git_commit", "git_dirty", "versions", "backend", "device_kind",
                   "device_count", "process_count")  # fmt: skip


def provenance(study: Study, workdir: str) -> list[dict[str, Any]]:
    """Per cell with finished runs: what its runs ran (``env.json``: each of
    ``PROVENANCE_KEYS``, the set of values over the runs) and ``disagree``, the keys on which
    its runs differ; ``config`` is among them when a run's recorded config fingerprint is not
    the one its directory is named by."""
    by_cell: dict[str, list[dict[str, Any]]] = {}
    for run in expand(study):
        path = run_dir(workdir, run)
        if state_of(path) != "done":
            continue
        with open(os.path.join(path, "env.json")) as f:
            env = json.load(f)
        record = {k: json.dumps(env.get(k), sort_keys=True) for k in PROVENANCE_KEYS}
        record["config"] = str(env.get("config_sha256", "")).startswith(run.hash)
        by_cell.setdefault(run.cell, []).append(record | {"seed": run.seed})
    out = []
    for cell, records in by_cell.items():
        seen = {k: sorted({r[k] for r in records}, key=str) for k in (*PROVENANCE_KEYS, "config")}
        disagree = [k for k, v in seen.items() if len(v) > 1 or v == [False]]
        out.append({"cell": cell, "seeds": [r["seed"] for r in records], "disagree": disagree,
                    **{k: [json.loads(x) for x in seen[k]] for k in PROVENANCE_KEYS}})  # fmt: skip
    return out


def _provenance_lines(study: Study, workdir: str) -> list[str]:
    """report.md's provenance section: one row per cell, its disagreements flagged."""
    lines = ["", "## Provenance", "", "Each run's `env.json`; a cell is flagged when its runs "
             "differ in any column (or a run's config fingerprint is not its directory's).", "",
             "| cell | seeds | git commit | device | jax / jaxlib / flax / optax | flag |",
             "|---|---|---|---|---|---|"]  # fmt: skip
    for p in provenance(study, workdir):
        commits = ", ".join(
            f"{(c or 'unknown')[:10]}{' (dirty)' if True in p['git_dirty'] else ''}"
            for c in p["git_commit"]
        )
        devices = ", ".join(f"{k} x {n}" for k in p["device_kind"] for n in p["device_count"])
        versions = "; ".join(
            " / ".join(str(v.get(n)) for n in ("jax", "jaxlib", "flax", "optax"))
            for v in p["versions"]
        )
        flag = ("**runs differ: " + ", ".join(p["disagree"]) + "**") if p["disagree"] else "ok"
        seeds = " ".join(map(str, p["seeds"]))
        lines.append(f"| {p['cell']} | {seeds} | {commits} | {devices} | {versions} | {flag} |")
    return lines


def write_report(study: Study, workdir: str, pictures: Sequence[str] = ()) -> list[str]:
    """Writes ``report.md`` (showing ``pictures``, PNGs in ``workdir``), ``results.csv`` and
    ``results.tex`` in ``workdir``; their paths."""
    table, runs = rows(study, workdir)
    task_axis = study.task_axis
    paths = [os.path.join(workdir, n) for n in ("report.md", "results.csv", "results.tex")]
    columns = ["cell", "metric", "mean", "std", "n", "ci_low", "ci_high", "ci_method", "runs"]
    with open(paths[1], "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows(table)
    lines = [f"# Study report: {study.base}", "", f"Seeds: {list(study.seeds)}. Every run's "
             "overrides: " + (", ".join(f"`{o}`" for o in study.overrides) or "none") + ".", "",
             "| cell | metric | mean | std | seeds | 95% CI (Student t) | runs |",
             "|---|---|---|---|---|---|---|"]  # fmt: skip
    for r in table:
        links = ", ".join(f"[{p.split('/')[-1]}]({p})" for p in r["runs"].split())
        lines.append(f"| {r['cell']} | {r['metric']} | {r['mean']:.4f} | {r['std']:.4f} | "
                     f"{r['n']} | [{r['ci_low']:.4f}, {r['ci_high']:.4f}] | {links} |")  # fmt: skip
    failed = [(cell, e) for cell, info in runs.items() for e in info["errors"]]
    if failed:
        lines += ["", "## Failed runs", ""] + [
            f"- {cell}, {e.splitlines()[0]}" for cell, e in failed
        ]
    if task_axis:
        lines += ["", f"## Across {task_axis} (stratified bootstrap, 2000 resamples, 95%)", "",
                  "| cells | metric | IQM | 95% CI | P(improve on baseline) | 95% CI |",
                  "|---|---|---|---|---|---|"]  # fmt: skip
        for a in aggregates(study, workdir, task_axis):
            p = (f"{a['p_improve']:.3f} | [{a['p_low']:.3f}, {a['p_high']:.3f}]"
                 if "p_improve" in a else "- | -")  # fmt: skip
            lines.append(f"| {a['group']} | {a['metric']} | {a['iqm']:.4f} | "
                         f"[{a['iqm_low']:.4f}, {a['iqm_high']:.4f}] | {p} |")  # fmt: skip
    if pictures:
        lines += ["", "## Plots", ""]
        lines += [f"![{os.path.basename(p)}]({os.path.basename(p)})" for p in pictures]
    lines += _provenance_lines(study, workdir)
    with open(paths[0], "w") as f:
        f.write("\n".join(lines) + "\n")
    with open(paths[2], "w") as f:
        f.write(_latex(table))
    return paths


def _latex(table: list[dict[str, Any]]) -> str:
    """A ``tabular`` of cell x metric: mean $\\pm$ std (n)."""
    escape = str.maketrans({"_": r"\_", "%": r"\%", "&": r"\&", "#": r"\#"})
    body = [f"{r['cell'].translate(escape)} & {r['metric'].translate(escape)} & "
            f"${r['mean']:.4f} \\pm {r['std']:.4f}$ & {r['n']} \\\\" for r in table]  # fmt: skip
    return "\n".join([r"\begin{tabular}{llrr}", r"\toprule",
                      r"cell & metric & mean $\pm$ std & seeds \\", r"\midrule", *body,
                      r"\bottomrule", r"\end{tabular}", ""])  # fmt: skip
