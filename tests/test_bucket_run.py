"""A whole run in an object-store work directory: ``--workdir=gs://bucket/run`` on a fake bucket
(``tests/fake_bucket.py``: every ``etils.epath`` call and orbax's arrays land in a local root).

The run trains, checkpoints (orbax's object-store commit files), logs ``metrics.jsonl`` and
TensorBoard through local staging, writes its JSON files, evaluates; a damaged newest checkpoint
is moved aside and the run resumes from the one before with the same losses; ``jaxalign eval``
and ``init_from`` read the bucket run. Nothing reaches the bucket through ``os`` (no literal
``gs:`` directory appears in the current one).
"""

from __future__ import annotations

import json
import os

import pytest

from jaxalign import cli, train
from jaxalign import config as config_lib
from jaxalign.train_lib.metric_writers import read_metrics
from tests.fake_bucket import fake_bucket

CONFIG = os.path.join(os.path.dirname(__file__), "..", "configs", "clip.py")
SCHEDULE = {"train.steps": 6, "train.checkpoint_every": 2, "train.keep_checkpoints": 3}


def _args(workdir: str, data_dir: str, **extra) -> list[str]:
    values = {"data.data_dir": data_dir, "train.eval_every": 6, **SCHEDULE, **extra}
    return [f"--config={CONFIG}:tiny", f"--workdir={workdir}"] + [
        f"--config.{k}={v}" for k, v in values.items()
    ]


def _losses(workdir: str) -> dict[int, float]:
    return {row["step"]: row["loss"] for row in read_metrics(workdir) if "loss" in row}


def test_a_run_in_a_bucket(shapes_data_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    root = tmp_path / "root"
    run = root / "bucket" / "run"
    with fake_bucket(root):
        assert cli.main(["train", *_args("gs://bucket/run", shapes_data_dir)]) == 0
        first = _losses("gs://bucket/run")
    assert sorted(first) == list(range(1, 7))
    for name in ("jaxalign-run.json", "config.json", "env.json", "summary.json"):
        assert (run / name).is_file(), name
    assert json.loads((run / "summary.json").read_text())["step"] == 6
    assert [p.name for p in (run / "tensorboard").iterdir()]  # the staged event file, copied
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["2", "4", "6"]
    assert (run / "checkpoints" / "6" / "commit_success.txt").is_file()  # orbax's GCS commit
    assert json.loads((run / "config.json").read_text())["data"]["data_dir"] == shapes_data_dir

    # The newest checkpoint damaged: moved aside (copied file by file: no rename on a bucket),
    # the run resumes from step 4 and logs steps 5 and 6 again, with the same losses.
    for path in (run / "checkpoints" / "6").rglob("*"):
        if path.is_file() and path.parent.name == "d":
            path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    capsys.readouterr()
    with fake_bucket(root):
        assert cli.main(["train", *_args("gs://bucket/run", shapes_data_dir)]) == 0
        again = _losses("gs://bucket/run")
    out = capsys.readouterr().out
    assert "checkpoint gs://bucket/run/checkpoints/6 does not read" in out
    assert "resumed from checkpoint 4" in out
    assert again == pytest.approx(first, rel=1e-6, abs=1e-6)
    assert len(list((root / "bucket" / "run" / "corrupt_checkpoints").iterdir())) == 1
    rows = read_metrics(run)  # the rows after step 4 dropped, then logged once more
    assert [r["step"] for r in rows if "loss" in r] == list(range(1, 7))
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["2", "4", "6"]

    # jaxalign eval reads the bucket run and writes eval.json there.
    with fake_bucket(root):
        assert cli.main(["eval", "--workdir=gs://bucket/run"]) == 0
    evaluated = json.loads((run / "eval.json").read_text())
    summary = json.loads((run / "summary.json").read_text())
    assert evaluated["step"] == 6
    assert evaluated["eval/zeroshot_top1"] == pytest.approx(summary["eval/zeroshot_top1"])

    # A new run starts from the bucket run's parameters (init_from reads the bucket).
    config = config_lib.load(  # the run's shapes and schedule: its compiled step is reused
        f"{CONFIG}:tiny",
        [f"data.data_dir={shapes_data_dir}", "init_from.workdir=gs://bucket/run"]
        + [f"{k}={v}" for k, v in {**SCHEDULE, "train.eval_every": 6}.items()],
    )
    with fake_bucket(root):
        train.train_and_evaluate(config, "gs://bucket/transfer")
    capsys.readouterr()
    saved = json.loads((root / "bucket" / "transfer" / "config.json").read_text())
    assert saved["init_from"]["workdir"] == "gs://bucket/run"  # a URI is kept as it is
    assert sorted(p.name for p in tmp_path.iterdir()) == ["root"]  # nothing through os
