"""CLIP adapted across domains (``clip_adapt``) on the tiny preset: without the term it is the
CLIP task exactly; with MMD or DANN, 1 device equals 8 (2x4); the target stream carries images
only, half as many as the source's; the target zero-shot eval is reported; bad combinations
are refused."""

from __future__ import annotations

import json
import pathlib

import jax
import numpy as np
import pytest

from jaxalign import config as config_lib
from jaxalign import train
from jaxalign.tasks.clip_adapt import ClipAdaptTask
from tests.trainer_child import losses

ROOT = pathlib.Path(__file__).resolve().parents[2]
CONFIG = str(ROOT / "configs" / "clip.py")


def _load(data_dir, preset="tiny_adapt", **extra):
    values = {"data.data_dir": data_dir, **extra}
    return config_lib.load(f"{CONFIG}:{preset}", [f"{k}={v}" for k, v in values.items()])


def test_without_the_term_it_is_the_clip_task(shapes_data_dir, tmp_path):
    plain = _load(shapes_data_dir, "tiny", **{"evals.retrieval_split": "''"})
    none = _load(shapes_data_dir, **{"adapt.method": "none", "evals.retrieval_split": "''"})
    one = jax.devices()[:1]
    train.train_and_evaluate(plain, tmp_path / "clip", devices=one)
    summary = train.train_and_evaluate(none, tmp_path / "none", devices=one)
    assert losses(tmp_path / "none") == losses(tmp_path / "clip")  # bit for bit
    assert 0.0 <= summary["eval/target/zeroshot_top1"] <= 1.0
    assert 0.0 <= summary["eval/source_validation/zeroshot_top1"] <= 1.0  # heldout_validation
    assert (
        summary["eval/zeroshot_top1"]
        == json.loads((tmp_path / "clip" / "summary.json").read_text())["eval/zeroshot_top1"]
    )


@pytest.mark.parametrize("method", ["mmd", "dann"])
def test_one_device_equals_eight(method, shapes_data_dir, tmp_path):
    overrides = {"adapt.method": method, "evals.retrieval_split": "''", "train.steps": 4}
    one = train.train_and_evaluate(
        _load(shapes_data_dir, **overrides), tmp_path / "one", devices=jax.devices()[:1]
    )
    eight = train.train_and_evaluate(
        _load(shapes_data_dir, **overrides, **{"mesh.data": 2, "mesh.fsdp": 4}), tmp_path / "eight"
    )
    a, b = losses(tmp_path / "one"), losses(tmp_path / "eight")
    assert sorted(a) == list(range(1, 5))
    np.testing.assert_allclose([b[s] for s in a], list(a.values()), rtol=1e-5, atol=1e-6)
    rows = [json.loads(line) for line in (tmp_path / "one" / "metrics.jsonl").open()]
    terms = [row["domain_term"] for row in rows if "domain_term" in row]
    assert len(terms) == 4 and all(np.isfinite(terms))
    for key in ("eval/target/zeroshot_top1", "eval/zeroshot_top1"):
        assert one[key] == pytest.approx(eight[key], abs=1e-6), key


def test_target_stream_is_images_only(shapes_data_dir):
    mesh = jax.sharding.Mesh(np.array(jax.devices()[:1]), ("data",))
    task = ClipAdaptTask(_load(shapes_data_dir, **{"adapt.method": "dann"}), mesh)
    task.prepare_data()
    assert sorted(task.batch_spec()) == ["pairs", "target"]
    iterator = iter(task.train_stream())
    batch = next(iterator)
    iterator.close()
    assert list(batch["target"]) == ["image"]  # no caption, no label of the target domain
    assert batch["target"]["image"].shape == (8, 32, 32, 3)  # adapt.target_batch_size: half
    assert task.batch_spec()["target"]["image"].shape == (8, 32, 32, 3)
    assert sorted(batch["pairs"]) == ["ids", "image", "mask"]
    params = jax.jit(task.init)(jax.random.key(0))["params"]
    assert "domain_discriminator" in params and "image_tower" in params


def test_bad_combinations_are_refused(shapes_data_dir):
    with pytest.raises(config_lib.ConfigError, match=r"optim\.micro_batches=2"):
        _load(shapes_data_dir, **{"optim.micro_batches": 2, "train.global_batch_size": 32})
    with pytest.raises(config_lib.ConfigError, match=r"adapt\.target_split=''"):
        _load(shapes_data_dir, **{"adapt.target_split": "''"})
    with pytest.raises(config_lib.ConfigError, match=r"adapt\.target_batch_size=12: must be"):
        config_lib.validate(_load(shapes_data_dir, **{"adapt.target_batch_size": 12}), 8)
    config = _load(shapes_data_dir, "demo_adapt_mmd")
    config_lib.validate(config, 8, check_data=False)
    assert config.task == "clip_adapt" and config.adapt.target_zeroshot_split == "outline_test"
