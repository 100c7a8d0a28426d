"""``jaxalign study``: every cell x seed in its own directory named by its config's hash; a
failing cell recorded and the others finished; a rerun trains only what is missing; status and
launch lines."""

from __future__ import annotations

import csv
import json
import os
import pathlib

import numpy as np
import pytest

from jaxalign import cli, train
from jaxalign import config as config_lib
from jaxalign.studies import plots, report, statistics
from jaxalign.studies import study as study_lib
from tests.trainer_child import cache_env, run_python, signal_hook

ROOT = pathlib.Path(__file__).resolve().parents[2]

STUDY = """
def get_study():
    return dict(
        base="{base}",
        overrides=("data.data_dir={data}", "train.steps=4", "train.log_every=1",
                   "train.checkpoint_every=2", "train.eval_every=2",
                   "train.timing_in_metrics=False"),
        # 12 examples do not split over the 8 test devices: that cell fails when it trains.
        axes={{"batch": {{"b16": ("train.global_batch_size=16",),
                          "b12": ("train.global_batch_size=12",)}}}},
        seeds=(0, 1),
        metrics=({{"key": "eval/zeroshot_top1", "label": "zero-shot top-1"}},),
        baseline="batch=b16",
    )
"""


@pytest.fixture
def study_file(tmp_path, builtin_data_dir):
    path = tmp_path / "tiny_study.py"
    path.write_text(STUDY.format(base=ROOT / "configs" / "clip.py:tiny", data=builtin_data_dir))
    return str(path)


def test_a_study_runs_resumes_and_reports_failures(study_file, tmp_path, capsys, monkeypatch):
    """The study process is killed (SIGKILL) in its second run at step 3, after that run's
    checkpoint 2; the rerun (``--jobs=2``: processes) trains the rest, that run from its
    checkpoint, records the failing cell's errors and reports; a run cut short is the only one
    trained by the next rerun (in this process); every finished run repeats bit for bit."""
    workdir = tmp_path / "study"
    args = ["study", f"--config={study_file}", f"--workdir={workdir}"]
    study = study_lib.load_study(study_file)
    runs = study_lib.expand(study)
    second = str(workdir / "runs" / runs[1].hash)
    hook = signal_hook(3, "SIGKILL", os.path.join(second, "checkpoints", "2"), second)
    code = f"import sys\nfrom jaxalign import cli\n{hook}\nsys.exit(cli.main(sys.argv[1:]))\n"
    killed = run_python(code, args, devices=8)
    assert killed.returncode == -9, killed.stderr[-3000:]
    assert cli.main([*args, "--status"]) == 0
    assert capsys.readouterr().out.strip() == "1 done, 0 running, 0 failed, 3 pending"

    # The rest two at a time, each a `jaxalign train` process (the tests' devices and
    # compilation cache through the environment).
    for name, value in cache_env().items():
        monkeypatch.setenv(name, value)
    assert cli.main([*args, "--jobs=2"]) == 1  # some runs failed
    out = capsys.readouterr().out
    assert "study: 4 runs, 3 to train" in out and "2 done, 0 running, 2 failed, 0 pending" in out
    log = (workdir / "runs" / f"{runs[1].hash}.log").read_text()
    assert "resumed from checkpoint 2" in log

    assert len({r.hash for r in runs}) == 4
    for run in runs:
        path = workdir / "runs" / run.hash
        record = json.loads((workdir / "runs" / f"{run.hash}.json").read_text())
        assert record["cell"] == run.cell and record["seed"] == run.seed
        assert os.path.realpath(workdir / "names" / run.cell / f"seed_{run.seed}") == str(path)
        if run.cell == "batch=b12":
            error = json.loads((workdir / "runs" / f"{run.hash}.error.json").read_text())
            assert error["type"] == "RunFailed" and "exit status 2: error: " in error["message"]
            assert "config.train.global_batch_size=12" in error["message"]
        else:
            summary = json.loads((path / "summary.json").read_text())
            assert (
                summary["step"] == 4
                and json.loads((path / "config.json").read_text())["seed"] == run.seed
            )

    # The report: the finished cell over its two seeds, the failed one with its error.
    summaries = [json.loads((workdir / "runs" / r.hash / "summary.json").read_text())
                 for r in runs if r.cell == "batch=b16"]  # fmt: skip
    values = [s["eval/zeroshot_top1"] for s in summaries]
    with open(workdir / "results.csv") as f:
        (row,) = list(csv.DictReader(f))
    assert (row["cell"], row["metric"], row["n"]) == ("batch=b16", "zero-shot top-1", "2")
    assert float(row["mean"]) == pytest.approx(np.mean(values))
    assert float(row["std"]) == pytest.approx(np.std(values, ddof=1))
    report = (workdir / "report.md").read_text()
    assert "## Failed runs" in report and "batch=b12, seed 0: RunFailed: exit status 2" in report
    assert "\\begin{tabular}" in (workdir / "results.tex").read_text()
    assert "| batch=b16 | 0 1 | " in report and report.rstrip().endswith("| ok |")
    assert "![learning_curves.png](learning_curves.png)" in report
    one = workdir / "runs" / done_runs(runs)[0].hash
    assert cli.main(["plot", f"--workdir={one}"]) == 0
    assert capsys.readouterr().out.strip() == str(one / "curves.png")
    assert (one / "curves.png").read_bytes()[:4] == b"\x89PNG"
    assert cli.main(["plot", f"--workdir={tmp_path}"]) == 2
    assert "metrics.jsonl has no training rows" in capsys.readouterr().err
    for run in done_runs(runs):
        env = json.loads((workdir / "runs" / run.hash / "env.json").read_text())
        assert env["config_sha256"].startswith(run.hash) and env["seed"] == run.seed
        assert env["device_count"] == 8 and isinstance(env["git_dirty"], (bool, type(None)))

    # A run cut short (its summary gone, its checkpoint kept) is the only one trained again.
    done = done_runs(runs)
    os.remove(workdir / "runs" / done[0].hash / "summary.json")
    assert cli.main([*args, "--status"]) == 0
    assert capsys.readouterr().out.strip() == "1 done, 0 running, 2 failed, 1 pending"
    launch = cli.main([*args, "--print-launch=launch/local.sh 1 --"])
    lines = capsys.readouterr().out.strip().splitlines()
    assert launch == 0 and len(lines) == 3  # the pending and the two failed runs
    assert lines[0].startswith("launch/local.sh 1 -- jaxalign train --config=")
    assert f"--workdir={workdir / 'runs' / done[0].hash}" in "\n".join(lines)
    assert cli.main(args) == 1
    out = capsys.readouterr().out
    assert "study: 4 runs, 1 to train" in out and "resumed from checkpoint 4" in out
    assert "2 done, 0 running, 2 failed, 0 pending" in out

    # Each finished run's metrics.jsonl (wall-clock figures kept out: timing_in_metrics) is
    # byte for byte the file of its config trained again, uninterrupted, in a fresh directory:
    # the run killed at step 3 and the one resumed at its last step included.
    for run in done:
        again = tmp_path / f"again_{run.seed}"
        train.train_and_evaluate(config_lib.load(study.base, run.overrides), str(again))
        filed = (workdir / "runs" / run.hash / "metrics.jsonl").read_bytes()
        assert filed == (again / "metrics.jsonl").read_bytes(), run
        assert b'"step": 4' in filed and b"examples_per_s" not in filed


def done_runs(runs):
    return [r for r in runs if r.cell == "batch=b16"]


def test_the_shipped_studies_expand(monkeypatch):
    """Every override of every shipped study names a real key with a valid value."""
    monkeypatch.chdir(ROOT)  # their base specs are relative, as a user runs them
    counts = {}
    for path in sorted((ROOT / "configs" / "studies").glob("*.py")):
        study = study_lib.load_study(str(path))
        runs = study_lib.expand(study)
        assert len({r.hash for r in runs}) == len(runs) == len(study.cells) * len(study.seeds)
        counts[path.stem] = len(runs)
    assert counts == {"adapt_digits": 40, "clip_batch_temperature": 18}


def test_a_bad_study_file_is_named(tmp_path, capsys):
    path = tmp_path / "bad.py"
    path.write_text("def get_study():\n    return dict(base='configs/clip.py:tiny', seeds=(0,))\n")
    assert cli.main(["study", f"--config={path}", f"--workdir={tmp_path / 's'}"]) == 2
    assert f"{path}: get_study() has no ['axes', 'metrics']" in capsys.readouterr().err


GRID = """
def get_study():
    return dict(
        base="{base}",
        axes={{"method": {{"a": ("optim.lr=0.001",), "b": ("optim.lr=0.002",)}},
               "task": {{"t1": ("train.steps=3",), "t2": ("train.steps=4",)}}}},
        seeds=(0, 1, 2),
        metrics=({{"key": "eval/top1", "label": "top-1"}},
                 {{"key": "select/oracle/top1", "label": "top-1", "oracle": True}}),
        baseline="method=a,task=t1",
        task_axis="task",
    )
"""


def test_the_report_compares_cells_across_tasks(tmp_path):
    """Finished runs written by hand (no training): method b beats a on every task and seed."""
    path = tmp_path / "grid.py"
    path.write_text(GRID.format(base=ROOT / "configs" / "clip.py:tiny"))
    study = study_lib.load_study(str(path))
    workdir = tmp_path / "study"
    scores: dict[str, list[list[float]]] = {"method=a": [[], []], "method=b": [[], []]}
    for run in study_lib.expand(study):
        method, task = run.cell.split(",")
        value = (0.5 if method == "method=a" else 0.8) + 0.01 * run.seed + 0.1 * (task == "task=t2")
        scores[method][int(task[-1]) - 1].append(value)
        run_path = workdir / "runs" / run.hash
        run_path.mkdir(parents=True)
        summary = {"stopped": None, "eval/top1": value, "select/oracle/top1": value}
        (run_path / "summary.json").write_text(json.dumps(summary))
        env = {
            "git_commit": "abc",
            "git_dirty": False,
            "versions": {"jax": "1"},
            "device_kind": "cpu",
            "device_count": 8,
            "config_sha256": run.hash + "0" * 52,
        }
        if run.cell == "method=b,task=t2" and run.seed == 2:
            env["git_dirty"] = True  # one run of one cell from a checkout with changes
        (run_path / "env.json").write_text(json.dumps(env))
        rows = [{"step": s, "loss": value / s} for s in (1, 2, 3)]
        (run_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    pictures = plots.study_plots(study, str(workdir))
    assert [os.path.basename(p) for p in pictures] == [
        "learning_curves.png", "metric_0_eval_top1.png", "metric_1_select_oracle_top1.png"
    ]  # fmt: skip
    assert all(pathlib.Path(p).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in pictures)
    paths = report.write_report(study, str(workdir), pictures)
    assert [os.path.basename(p) for p in paths] == ["report.md", "results.csv", "results.tex"]
    rows = report.aggregates(study, str(workdir), "task")
    oracle = "top-1 (oracle: target labels)"
    assert [(r["group"], r["metric"]) for r in rows] == [
        ("method=a", "top-1"), ("method=b", "top-1"), ("method=a", oracle), ("method=b", oracle)
    ]  # fmt: skip
    b = np.array(scores["method=b"]).T  # [seeds, tasks]
    assert rows[1]["iqm"] == pytest.approx(statistics.interquartile_mean(b))
    assert rows[1]["iqm_low"] <= rows[1]["iqm"] <= rows[1]["iqm_high"]
    assert (rows[1]["p_improve"], rows[1]["p_low"], rows[1]["p_high"]) == (1.0, 1.0, 1.0)
    assert "p_improve" not in rows[0]  # the baseline's own group
    text = (workdir / "report.md").read_text()
    assert "## Across task" in text and "| method=b | top-1 | 0.8" in text
    assert "![learning_curves.png](learning_curves.png)" in text
    flagged = [p["cell"] for p in report.provenance(study, str(workdir)) if p["disagree"]]
    assert flagged == ["method=b,task=t2"]
    assert (
        "| method=b,task=t2 | 0 1 2 | abc (dirty) | cpu x 8 | 1 / None / None / None | "
        "**runs differ: git_dirty** |" in text
    )
