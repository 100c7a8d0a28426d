"""The classification task end to end: from scratch on digits (1 device = 8 devices), and from a
saved CLIP run: fine-tuning and a linear probe of its frozen image tower, with k-NN on the
tower's features; transfer mismatches name both sides."""

from __future__ import annotations

import json
import pathlib

import jax
import numpy as np
import pytest

from jaxalign import config as config_lib
from jaxalign import train
from tests.trainer_child import losses, saved_subtree

ROOT = pathlib.Path(__file__).resolve().parents[2]
CLIP = str(ROOT / "configs" / "clip.py")
CLASSIFY = str(ROOT / "configs" / "classify.py")
# The CLIP run's image tower, shrunk; the classifiers below must name the same fields.
TOWER = {"model.image.channels": "(8, 16)", "model.image.features": "32"}


@pytest.fixture(scope="module")
def data_dir(builtin_data_dir):
    return builtin_data_dir  # tests/conftest.py: both built-in datasets, built once


def _load(spec, data_dir, **overrides):
    values = {"data.data_dir": data_dir, **overrides}
    return config_lib.load(spec, [f"{k}={v}" for k, v in values.items()])


@pytest.fixture(scope="module")
def clip_run(data_dir, tmp_path_factory):
    """A few steps of the CLIP demo's model (its ConvNet tower, shrunk) on shapes_captions."""
    workdir = tmp_path_factory.mktemp("clip")
    config = _load(
        f"{CLIP}:demo",
        data_dir,
        **TOWER,
        **{
            "data.image_size": "32",
            "data.prefetch": "0",
            "train.global_batch_size": "32",
            "train.steps": "4",
            "train.checkpoint_every": "4",
            "evals.zeroshot_split": "''",
            "evals.retrieval_split": "''",
        },
    )
    train.train_and_evaluate(config, workdir)
    return workdir


def _shapes(data_dir, preset, clip_run, **overrides):
    values = {
        **TOWER,
        "data.image_size": "32",
        "data.examples_per_class": "2",
        "data.prefetch": "0",
        "train.global_batch_size": "16",
        "train.steps": "3",
        "train.eval_every": "3",
        "evals.max_examples": "64",
        "evals.batch_size": "32",
        "evals.knn_k": "3",
        **overrides,
    }
    if clip_run is not None:
        values["init_from.workdir"] = str(clip_run)
    return _load(f"{CLASSIFY}:{preset}", data_dir, **values)


def test_from_scratch_one_device_equals_eight(data_dir, tmp_path):
    config = _load(f"{CLASSIFY}:tiny", data_dir)
    one = train.train_and_evaluate(config, tmp_path / "one", devices=jax.devices()[:1])
    eight = train.train_and_evaluate(config, tmp_path / "eight")
    steps = range(1, config.train.steps + 1)
    np.testing.assert_allclose(
        [losses(tmp_path / "eight")[s] for s in steps],
        [losses(tmp_path / "one")[s] for s in steps],
        rtol=1e-5,
    )
    assert 0.0 <= one["eval/source_validation/top1"] <= one["eval/source_validation/top5"] <= 1
    assert one["eval/source_validation/top1"] == pytest.approx(eight["eval/source_validation/top1"])
    rows = [json.loads(line) for line in (tmp_path / "one" / "metrics.jsonl").open()]
    assert all(0 <= r["accuracy"] <= 1 for r in rows if "loss" in r)


def test_linear_probe_keeps_the_clip_tower_frozen(data_dir, clip_run, tmp_path):
    config = _shapes(data_dir, "shapes_probe", clip_run, **{"optim.ema_decay": "0.5"})
    summary = train.train_and_evaluate(config, tmp_path / "probe")
    for split in ("validation[:256]", "validation[256:]"):
        for metric in ("top1", "top5", "knn_top1"):
            assert 0 <= summary[f"eval/{split}/{metric}"] <= 1
    tower = saved_subtree(clip_run, "params")["image_tower"]
    probe = saved_subtree(tmp_path / "probe", "params")
    jax.tree.map(np.testing.assert_array_equal, probe["backbone"], tower)  # bit for bit
    ema = saved_subtree(tmp_path / "probe", "ema_params", "backbone")
    jax.tree.map(np.testing.assert_array_equal, ema, tower)
    assert any(np.any(np.asarray(w) != 0) for w in jax.tree.leaves(probe["head"]))
    saved = json.loads((tmp_path / "probe" / "config.json").read_text())
    assert saved["init_from"] == {
        "workdir": str(clip_run),  # saved absolute
        "step": None,
        "params": ["image_tower->backbone"],
    }
    # The source run gone, the finished probe still resumes (and evaluates again).
    clip_run.rename(clip_run.with_name("moved"))
    try:
        again = train.train_and_evaluate(config, tmp_path / "probe")
    finally:
        clip_run.with_name("moved").rename(clip_run)
    assert again["step"] == summary["step"]
    assert again["eval/validation[256:]/top1"] == summary["eval/validation[256:]/top1"]


def test_fine_tuning_starts_from_the_clip_tower(data_dir, clip_run, tmp_path):
    train.train_and_evaluate(_shapes(data_dir, "shapes_finetune", clip_run), tmp_path / "ft")
    train.train_and_evaluate(_shapes(data_dir, "shapes_scratch", None), tmp_path / "scratch")
    tower = saved_subtree(clip_run, "params")["image_tower"]
    tuned = saved_subtree(tmp_path / "ft", "params")["backbone"]
    scratch = saved_subtree(tmp_path / "scratch", "params")["backbone"]

    def distance(a, b):
        return sum(
            float(np.sum((np.asarray(x) - np.asarray(y)) ** 2))
            for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True)
        )

    assert 0 < distance(tuned, tower) < 1e-3 * distance(scratch, tower)  # moved, a little


def test_a_missing_source_run_names_the_key(data_dir, tmp_path):
    config = _shapes(data_dir, "shapes_probe", None, **{"init_from.workdir": str(tmp_path / "no")})
    with pytest.raises(config_lib.MissingDataError, match=r"config\.init_from\.workdir="):
        train.train_and_evaluate(config, tmp_path / "run")


def test_a_mapping_to_a_missing_subtree_names_both_sides(data_dir, clip_run, tmp_path):
    config = _shapes(
        data_dir, "shapes_finetune", clip_run, **{"init_from.params": "('image_towr->backbone',)"}
    )
    with pytest.raises(config_lib.ConfigError) as error:
        train.train_and_evaluate(config, tmp_path)
    assert "'image_towr'" in str(error.value) and "'image_tower'" in str(error.value)
    assert not (tmp_path / "checkpoints").exists() or not any((tmp_path / "checkpoints").iterdir())


def test_a_shape_mismatch_names_both_sides(data_dir, clip_run, tmp_path):
    config = _shapes(data_dir, "shapes_finetune", clip_run, **{"model.image.features": "48"})
    with pytest.raises(config_lib.ConfigError) as error:
        train.train_and_evaluate(config, tmp_path)
    message = str(error.value)
    assert "image_tower/fc/kernel (1024, 32)" in message
    assert "backbone/fc/kernel (1024, 48)" in message


def test_a_missing_eval_split_names_the_key(data_dir, tmp_path):
    config = _load(f"{CLASSIFY}:tiny", data_dir, **{"evals.splits": "('source_valdation',)"})
    with pytest.raises(config_lib.ConfigError, match=r"config\.evals\.splits='source_valdation'"):
        train.train_and_evaluate(config, tmp_path)
    assert not (tmp_path / "config.json").exists()
