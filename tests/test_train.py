"""The trainer end to end on the CLIP tiny preset: the real entry point, the work directory's
files, 1 device = 8 devices, exact resume after SIGKILL, SIGTERM, one compilation, non-finite
updates, bad configs, resuming with another config, and ``jaxalign eval``.

Runs that must die (SIGKILL / SIGTERM at a chosen step) are real subprocesses of the real
trainer (``tests/trainer_child.py``).
"""

from __future__ import annotations

import json
import os
import shutil

import jax
import numpy as np
import pytest

from jaxalign import cli, train
from jaxalign import config as config_lib
from jaxalign.tasks.clip import ClipTask
from jaxalign.train_lib.checkpoint import Checkpointer
from jaxalign.train_lib.metric_writers import read_metrics
from tests.trainer_child import losses, plant_nan, run_trainer, saved_subtree

CONFIG = os.path.join(os.path.dirname(__file__), "..", "configs", "clip.py")


@pytest.fixture(scope="module")
def data_dir(shapes_data_dir):
    return shapes_data_dir


def _overrides(data_dir, **extra):
    values = {"data.data_dir": data_dir, **extra}
    return [f"--config.{k}={v}" for k, v in values.items()]


def _load(data_dir, **extra):
    return config_lib.load(f"{CONFIG}:tiny", _overrides(data_dir, **extra))


def _run_child(workdir, overrides, **kwargs):
    return run_trainer(f"{CONFIG}:tiny", workdir, overrides, **kwargs)


_losses = losses


RESUME = {"train.steps": 8, "train.checkpoint_every": 3, "train.eval_every": 8}


@pytest.fixture(scope="module")
def uninterrupted(data_dir, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("uninterrupted")
    result = _run_child(workdir, _overrides(data_dir, **RESUME))
    assert result.returncode == 0, result.stderr[-3000:]
    return workdir, result


def test_entry_point_writes_the_work_directory(uninterrupted):
    workdir, result = uninterrupted
    for name in ("config.json", "env.json", "metrics.jsonl", "summary.json"):
        assert (workdir / name).is_file(), name
    assert os.listdir(workdir / "tensorboard")
    assert sorted(os.listdir(workdir / "checkpoints")) == ["6", "8"]  # keep_checkpoints=2
    summary = json.loads((workdir / "summary.json").read_text())
    assert summary["step"] == 8
    for key in ("eval/zeroshot_top1", "eval/zeroshot_chance", "eval/i2t_R@1", "eval/t2i_R@10"):
        assert 0.0 <= summary[key] <= 1.0, key
    assert summary["eval/zeroshot_chance"] == pytest.approx(1 / 30)
    rows = read_metrics(workdir)
    train_rows = [row for row in rows if "loss" in row]
    assert [row["step"] for row in train_rows] == list(range(1, 9))
    assert all(np.isfinite(row["loss"]) for row in train_rows)
    assert all(row["examples_per_s"] > 0 for row in train_rows[1:])
    assert "flops_per_s_per_device" in train_rows[-1] and "mfu" not in train_rows[-1]  # CPU
    for row in train_rows[1:]:  # where the step's time went (the first interval has none)
        assert 0.0 <= row["input_wait_share"] < 1.0 and 0.0 < row["loss_share"] < 1.0, row
    assert 0.0 <= summary["input_wait_share"] < 1.0 and 0.0 < summary["loss_share"] < 1.0
    assert rows[-1]["step"] == 8 and "eval/i2t_R@1" in rows[-1]
    config = json.loads((workdir / "config.json").read_text())
    assert config["train"]["steps"] == 8
    env = json.loads((workdir / "env.json").read_text())
    assert env["device_count"] == 1 and env["versions"]["jax"] == jax.__version__
    assert "step 8: loss" in result.stdout


def test_sigkill_between_checkpoints_resumes_bit_for_bit(uninterrupted, data_dir, tmp_path):
    reference, _ = uninterrupted
    overrides = _overrides(data_dir, **RESUME)
    killed = _run_child(tmp_path, overrides, signal_at=5, after_checkpoint=3)
    assert killed.returncode == -9, killed.stderr[-3000:]
    assert max(_losses(tmp_path)) == 5  # logged up to the kill, checkpoint 3 on disk
    # What a kill during a save leaves: orbax's temporary directory. It must be ignored.
    half_written = tmp_path / "checkpoints" / "6.orbax-checkpoint-tmp-1700000000"
    (half_written / "state").mkdir(parents=True)
    (half_written / "state" / "garbage").write_text("not a checkpoint")

    resumed = _run_child(tmp_path, overrides)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resumed from checkpoint 3" in resumed.stdout
    assert _losses(tmp_path) == _losses(reference)  # every step, float for float
    steps = [row["step"] for row in read_metrics(tmp_path) if "loss" in row]
    assert steps == list(range(1, 9))  # rows 4-5 of the killed run were dropped, not doubled


def test_sigterm_saves_and_stops_cleanly(uninterrupted, data_dir, tmp_path):
    reference, _ = uninterrupted
    overrides = _overrides(data_dir, **RESUME)
    stopped = _run_child(tmp_path, overrides, signal_at=4, signal_name="SIGTERM")
    assert stopped.returncode == train.PREEMPTED_EXIT_CODE, stopped.stderr[-3000:]
    assert "stopped by SIGTERM at step" in stopped.stderr
    saved = sorted(int(s) for s in os.listdir(tmp_path / "checkpoints") if s.isdigit())
    assert saved[-1] in (4, 5)  # the step in flight when the signal arrived
    resumed = _run_child(tmp_path, overrides)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resumed from checkpoint {saved[-1]}" in resumed.stdout
    assert _losses(tmp_path) == _losses(reference)


def test_one_device_equals_eight(data_dir, tmp_path, monkeypatch):
    """The whole trainer on one device and on 2x4 (data x fsdp: the batch over 8 shards, the
    parameters over 4): the same losses, eval figures and, after 10 steps, parameters. With a
    checkpoint and an eval in between, each run traces its step once (a trainer that called a
    jitted step whose arguments changed type or sharding along the way would show more)."""
    traces = []
    loss_and_grad = ClipTask.loss_and_grad

    def counted(self, *args):
        traces.append(1)
        return loss_and_grad(self, *args)

    monkeypatch.setattr(ClipTask, "loss_and_grad", counted)
    overrides = {
        "train.steps": 10,
        "train.log_every": 1,
        "train.checkpoint_every": 5,
        "train.eval_every": 5,
    }
    one = train.train_and_evaluate(
        _load(data_dir, **overrides), tmp_path / "one", devices=jax.devices()[:1]
    )
    assert len(traces) == 1
    config = _load(data_dir, **overrides, **{"mesh.data": 2, "mesh.fsdp": 4})
    eight = train.train_and_evaluate(config, tmp_path / "eight")
    assert len(traces) == 2
    assert one["step"] == eight["step"] == 10
    assert json.loads((tmp_path / "eight" / "env.json").read_text())["mesh"]["fsdp"] == 4
    losses_one, losses_eight = _losses(tmp_path / "one"), _losses(tmp_path / "eight")
    assert sorted(losses_one) == list(range(1, 11))
    np.testing.assert_allclose(
        [losses_eight[s] for s in range(1, 11)], [losses_one[s] for s in range(1, 11)], rtol=1e-5
    )
    assert not np.isclose(losses_one[1], losses_one[10])  # it trains
    for key, value in one.items():
        if key.startswith("eval/"):
            assert eight[key] == pytest.approx(value, abs=1e-5), key
    # Parameters with a zero gradient up to rounding (attention key biases: softmax ignores a
    # per-query shift) drift by Adam-normalised rounding noise: 1e-4.
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4),
        saved_subtree(tmp_path / "eight", "params"),
        saved_subtree(tmp_path / "one", "params"),
    )


def test_the_loss_share_grows_with_the_global_batch(data_dir, tmp_path):
    """The encoders' and the input pipeline's cost grow with the batch B and InfoNCE's with
    B^2, so the share of the step spent in the loss (timed alone at start-up,
    ``Task.objective_probe``) grows with B."""
    shares = {}
    for batch in (16, 512):
        overrides = {"train.global_batch_size": batch, "train.steps": 6, "train.log_every": 2}
        overrides.update({"train.checkpoint_every": 6, "train.eval_every": 6})
        summary = train.train_and_evaluate(
            _load(data_dir, **overrides, **{"objective.impl": "naive"}),
            tmp_path / str(batch),
            devices=jax.devices()[:1],
        )
        rows = [row for row in read_metrics(tmp_path / str(batch)) if "loss_share" in row]
        assert [row["step"] for row in rows] == [2, 4, 6]
        for row in rows:
            assert 0.0 < row["loss_share"] < 1.0 and 0.0 <= row["input_wait_share"] < 1.0, row
        shares[batch] = summary["loss_share"]
    assert shares[512] > shares[16], shares


def test_a_nan_batch_is_skipped_and_counted(data_dir, tmp_path, monkeypatch):
    plant_nan(monkeypatch, bad_steps={3})
    summary = train.train_and_evaluate(_load(data_dir, **{"train.steps": 5}), tmp_path)
    assert summary["nonfinite_total"] == 1
    rows = {row["step"]: row for row in read_metrics(tmp_path) if "loss" in row}
    assert rows[3]["skipped"] == 1 and not np.isfinite(float(rows[3]["loss"]))
    assert all(rows[s]["skipped"] == 0 and np.isfinite(rows[s]["loss"]) for s in (1, 2, 4, 5))
    # The skipped update did not advance the schedule: step 4 gets the rate step 3 would have.
    assert rows[4]["lr"] == rows[3]["lr"] != rows[2]["lr"]


def test_too_many_nonfinite_updates_stop_the_run(data_dir, tmp_path, monkeypatch):
    plant_nan(monkeypatch, bad_steps={2, 3, 4})
    config = _load(data_dir, **{"train.steps": 5, "optim.max_nonfinite_in_a_row": 3})
    with pytest.raises(train.TrainingDivergedError, match="3 updates in a row"):
        train.train_and_evaluate(config, tmp_path)


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("--config.train.batch_size=16", "unknown key config.train.batch_size"),
        ("--config.optim.lr=fast", "config.optim.lr='fast'"),
        ("--config.train.global_batch_size=13", "config.train.global_batch_size=13"),
        ("--config.data.name=nope", "config.data.name='nope'"),
        ("--config.data.image_size=30", "config.data.image_size=30"),
    ],
)
def test_a_bad_config_fails_before_compiling_and_names_the_key(
    data_dir, tmp_path, capsys, override, expected
):
    args = [
        f"--config={CONFIG}:tiny",
        f"--workdir={tmp_path}",
        f"--config.data.data_dir={data_dir}",
    ]
    assert cli.main(["train", *args, override]) == 2
    assert expected in capsys.readouterr().err
    assert not (tmp_path / "config.json").exists()  # written only once the config passed


def test_a_missing_dataset_names_the_key(tmp_path, capsys):
    args = [
        f"--config={CONFIG}:tiny",
        f"--workdir={tmp_path}",
        "--config.data.source=tfds",
        "--config.data.name=my_pairs",
        f"--config.data.data_dir={tmp_path / 'nowhere'}",
        f"--config.data.tokenizer={tmp_path}",
    ]
    assert cli.main(["train", *args]) == 2
    assert "config.data.name='my_pairs'" in capsys.readouterr().err


def test_a_missing_eval_split_names_the_key(data_dir, tmp_path, capsys):
    args = [f"--config={CONFIG}:tiny", f"--workdir={tmp_path}", *_overrides(data_dir)]
    assert cli.main(["train", *args, "--config.evals.retrieval_split=dev"]) == 2
    assert "config.evals.retrieval_split='dev'" in capsys.readouterr().err
    assert not (tmp_path / "config.json").exists()  # so the corrected command can start
    # The preset's 5 steps and final eval: the programs the NaN-batch test compiled.
    assert cli.main(["train", *args]) == 0


def test_running_a_finished_run_again_evaluates_again(uninterrupted, data_dir, tmp_path):
    workdir = tmp_path / "again"
    shutil.copytree(uninterrupted[0], workdir)
    again = _run_child(workdir, _overrides(data_dir, **RESUME))
    assert again.returncode == 0, again.stderr[-3000:]
    assert "resumed from checkpoint 8" in again.stdout
    rows = read_metrics(workdir)
    assert [r["step"] for r in rows if "loss" in r] == list(range(1, 9))
    assert [r["step"] for r in rows if "eval/i2t_R@1" in r] == [8]  # replaced, not doubled


def test_eval_command_reruns_the_evals_from_the_newest_checkpoint(
    uninterrupted, capsys, monkeypatch
):

    asked = []
    restore_part = Checkpointer.restore_part

    def spy(self, abstract, step=None):
        asked.append(sorted(abstract))
        return restore_part(self, abstract, step)

    monkeypatch.setattr(Checkpointer, "restore", None)  # the whole state is never read
    monkeypatch.setattr(Checkpointer, "restore_part", spy)
    workdir, _ = uninterrupted
    assert cli.main(["eval", f"--workdir={workdir}"]) == 0
    assert asked == [["ema_params", "model_state", "params"]]  # no optimizer state
    printed = json.loads(capsys.readouterr().out)
    summary = json.loads((workdir / "summary.json").read_text())
    assert printed["step"] == 8
    for key, value in summary.items():
        if key.startswith("eval/"):
            assert printed[key] == pytest.approx(value, abs=1e-6), key
    assert json.loads((workdir / "eval.json").read_text()) == printed


def test_resuming_with_another_config_is_refused(uninterrupted, data_dir, tmp_path, capsys):
    import shutil

    workdir = tmp_path / "run"
    shutil.copytree(uninterrupted[0], workdir)
    saved = (workdir / "config.json").read_text()
    args = ["train", f"--config={CONFIG}:tiny", f"--workdir={workdir}"]
    args += _overrides(data_dir, **RESUME)
    for override, key, old, new in [
        ("--config.model.image.depth=2", "config.model.image.depth", 1, 2),
        ("--config.train.global_batch_size=32", "config.train.global_batch_size", 16, 32),
    ]:
        assert cli.main([*args, override]) == 2
        err = capsys.readouterr().err
        assert f"{key}: the run was started with {old}, this command has {new}" in err
        assert (workdir / "config.json").read_text() == saved  # left as it was
    assert sorted(os.listdir(workdir / "checkpoints")) == ["6", "8"]  # nothing compiled or run


def test_resuming_with_more_steps_continues(uninterrupted, data_dir, tmp_path):
    import shutil

    workdir = tmp_path / "run"
    shutil.copytree(uninterrupted[0], workdir)
    more = _run_child(workdir, _overrides(data_dir, **{**RESUME, "train.steps": 10}))
    assert more.returncode == 0, more.stderr[-3000:]
    assert "resumed from checkpoint 8" in more.stdout
    assert "config.train.steps: 8 -> 10 (changed on resume)" in more.stdout
    assert json.loads((workdir / "config.json").read_text())["train"]["steps"] == 10
    assert sorted(_losses(workdir)) == list(range(1, 11))
    # The schedule is rebuilt for the new end: step 9 uses the 10-step schedule's rate.
    from jaxalign.train_lib import make_optimizer

    config = _load(data_dir, **{**RESUME, "train.steps": 10})
    _, schedule = make_optimizer(config.optim, 10)
    rows = {r["step"]: r for r in read_metrics(workdir) if "loss" in r}
    assert rows[9]["lr"] == pytest.approx(float(schedule(8)), rel=1e-6)
    assert rows[9]["lr"] != pytest.approx(rows[8]["lr"], rel=1e-3)


def test_fewer_steps_than_the_run_reached_are_refused(uninterrupted, data_dir, tmp_path, capsys):
    import shutil

    workdir = tmp_path / "run"
    shutil.copytree(uninterrupted[0], workdir)
    args = ["train", f"--config={CONFIG}:tiny", f"--workdir={workdir}"]
    args += _overrides(data_dir, **{**RESUME, "train.steps": 6})
    assert cli.main(args) == 2
    assert "config.train.steps=6: the run in" in capsys.readouterr().err
