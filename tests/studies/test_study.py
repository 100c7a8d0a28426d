"""``jaxalign study``: every cell x seed in its own directory named by its config's hash; a
failing cell recorded and the others finished; a rerun trains only what is missing; status and
launch lines."""

from __future__ import annotations

import json
import os
import pathlib

import pytest

from jaxalign import cli
from jaxalign.studies import study as study_lib

ROOT = pathlib.Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.usefixtures("shared_compilation_cache")  # tests/conftest.py

STUDY = """
def get_study():
    return dict(
        base="{base}",
        overrides=("data.data_dir={data}", "train.steps=2", "train.log_every=1",
                   "train.checkpoint_every=2", "train.eval_every=2"),
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


def test_a_study_runs_resumes_and_reports_failures(study_file, tmp_path, capsys):
    workdir = tmp_path / "study"
    args = ["study", f"--config={study_file}", f"--workdir={workdir}"]
    assert cli.main(args) == 1  # some runs failed
    out = capsys.readouterr().out
    assert "study: 4 runs, 4 to train" in out and "2 done, 0 running, 2 failed, 0 pending" in out

    study = study_lib.load_study(study_file)
    runs = study_lib.expand(study)
    assert len({r.hash for r in runs}) == 4
    for run in runs:
        path = workdir / "runs" / run.hash
        record = json.loads((workdir / "runs" / f"{run.hash}.json").read_text())
        assert record["cell"] == run.cell and record["seed"] == run.seed
        assert os.path.realpath(workdir / "names" / run.cell / f"seed_{run.seed}") == str(path)
        if run.cell == "batch=b12":
            error = json.loads((workdir / "runs" / f"{run.hash}.error.json").read_text())
            assert error["type"] == "ConfigError" and "global_batch_size" in error["message"]
        else:
            summary = json.loads((path / "summary.json").read_text())
            assert (
                summary["step"] == 2
                and json.loads((path / "config.json").read_text())["seed"] == run.seed
            )

    # A run cut short (its summary gone, its checkpoint kept) is the only one trained again.
    done = [r for r in runs if r.cell == "batch=b16"]
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
    assert "study: 4 runs, 1 to train" in out and "resumed from checkpoint 2" in out
    assert "2 done, 0 running, 2 failed, 0 pending" in out


def test_a_bad_study_file_is_named(tmp_path, capsys):
    path = tmp_path / "bad.py"
    path.write_text("def get_study():\n    return dict(base='configs/clip.py:tiny', seeds=(0,))\n")
    assert cli.main(["study", f"--config={path}", f"--workdir={tmp_path / 's'}"]) == 2
    assert f"{path}: get_study() has no ['axes', 'metrics']" in capsys.readouterr().err
