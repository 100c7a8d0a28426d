"""SimCLR on the tiny preset: two views per image and no label in the batch; 1 device equals
8 (2x4) for 10 steps, batch-norm statistics included; exact resume after SIGKILL; the probe
evals; bad configs refused."""

from __future__ import annotations

import json
import pathlib

import jax
import numpy as np
import pytest

from jaxalign import config as config_lib
from jaxalign import train
from jaxalign.tasks.simclr import SimCLRTask
from tests.trainer_child import losses, run_trainer

ROOT = pathlib.Path(__file__).resolve().parents[2]
CONFIG = str(ROOT / "configs" / "simclr.py")


@pytest.fixture(scope="module")
def data_dir(builtin_data_dir):
    return builtin_data_dir  # tests/conftest.py: both built-in datasets, built once


def _overrides(data_dir, **extra):
    return [f"{k}={v}" for k, v in {"data.data_dir": data_dir, **extra}.items()]


def test_the_batch_is_two_views_and_no_label(data_dir):
    mesh = jax.sharding.Mesh(np.array(jax.devices()[:1]), ("data",))
    task = SimCLRTask(config_lib.load(f"{CONFIG}:tiny", _overrides(data_dir)), mesh)
    task.prepare_data()
    iterator = iter(task.train_stream())
    batch = next(iterator)
    iterator.close()
    assert sorted(batch) == sorted(task.batch_spec()) == ["view1", "view2"]
    assert batch["view1"].shape == (16, 16, 16, 3) == task.batch_spec()["view1"].shape
    assert not np.allclose(batch["view1"], batch["view2"])  # two different augmentations
    variables = task.init(jax.random.key(0))
    assert sorted(variables) == ["batch_stats", "params"]
    assert sorted(variables["params"]) == ["encoder", "projection"]


def test_one_device_equals_eight_for_ten_steps(data_dir, tmp_path):
    extra = {"train.steps": 10, "train.eval_every": 10, "train.checkpoint_every": 10}
    one = train.train_and_evaluate(
        config_lib.load(f"{CONFIG}:tiny", _overrides(data_dir, **extra)),
        tmp_path / "one",
        devices=jax.devices()[:1],
    )
    mesh = {"mesh.data": 2, "mesh.fsdp": 4}
    eight = train.train_and_evaluate(
        config_lib.load(f"{CONFIG}:tiny", _overrides(data_dir, **extra, **mesh)),
        tmp_path / "eight",
    )
    a, b = losses(tmp_path / "one"), losses(tmp_path / "eight")
    assert sorted(a) == list(range(1, 11))
    np.testing.assert_allclose([b[s] for s in a], list(a.values()), rtol=1e-5, atol=1e-6)
    # Batch norm's running statistics (read by the probes) agree too, so the evals do.
    for key in ("eval/probe/linear_top1", "eval/probe/knn_top1", "eval/probe/2shot/knn_top1"):
        assert 0.0 <= one[key] <= 1.0
        assert one[key] == pytest.approx(eight[key], abs=1e-6), key
    rows = [json.loads(line) for line in (tmp_path / "one" / "metrics.jsonl").open()]
    assert all(-1.0 <= row["positive_similarity"] <= 1.0 for row in rows if "loss" in row)


def test_sigkill_between_checkpoints_resumes_bit_for_bit(data_dir, tmp_path):
    extra = {"train.steps": 8, "train.checkpoint_every": 4, "train.eval_every": 8}
    extra["evals.shots"] = "(2,)"
    overrides = [f"--config.{o}" for o in _overrides(data_dir, **extra)]
    reference = run_trainer(f"{CONFIG}:tiny", tmp_path / "reference", overrides)
    assert reference.returncode == 0, reference.stderr[-3000:]
    workdir = tmp_path / "killed"
    killed = run_trainer(f"{CONFIG}:tiny", workdir, overrides, signal_at=6, after_checkpoint=4)
    assert killed.returncode == -9, killed.stderr[-3000:]
    resumed = run_trainer(f"{CONFIG}:tiny", workdir, overrides)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resumed from checkpoint 4" in resumed.stdout
    assert losses(workdir) == losses(tmp_path / "reference")  # bit for bit
    summaries = [
        json.loads((tmp_path / d / "summary.json").read_text()) for d in ("reference", "killed")
    ]
    assert summaries[0]["eval/probe/linear_top1"] == summaries[1]["eval/probe/linear_top1"]


def test_bad_configs_are_refused(data_dir):
    with pytest.raises(config_lib.ConfigError, match=r"optim\.micro_batches=2"):
        config_lib.load(f"{CONFIG}:tiny", ["optim.micro_batches=2"])
    with pytest.raises(config_lib.ConfigError, match=r"crop_area=\(0\.9, 0\.2\)"):
        config_lib.load(f"{CONFIG}:tiny", ["data.crop_area=(0.9, 0.2)"])
    with pytest.raises(config_lib.ConfigError, match=r"model\.image\.patch_size.*ResNet"):
        config_lib.load(f"{CONFIG}:tiny", ["model.image.patch_size=4"])
    with pytest.raises(config_lib.ConfigError, match=r"evals\.test_split='nope'"):
        config = config_lib.load(
            f"{CONFIG}:tiny", _overrides(data_dir, **{"evals.test_split": "nope"})
        )
        mesh = jax.sharding.Mesh(np.array(jax.devices()[:1]), ("data",))
        SimCLRTask(config, mesh).prepare_data()
    for preset in ("digits", "resnet50_imagenet"):
        config_lib.validate(config_lib.load(f"{CONFIG}:{preset}"), 8, check_data=False)
