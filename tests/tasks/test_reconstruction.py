"""The autoencoder and MAE tasks on their tiny presets: 1 device equals 8 (2x4) for 10 steps;
MAE's exact resume after SIGKILL; MAE keeps exactly (1 - ratio) of every example's patches, the same
on any mesh, and its loss reads hidden patches only; every eval writes the reconstruction
picture; bad configs refused."""

from __future__ import annotations

import pathlib

import jax
import numpy as np
import pytest
from PIL import Image

from jaxalign import config as config_lib
from jaxalign import train
from jaxalign.models.mae import patchify, unpatchify
from jaxalign.objectives.masking import kept_patches, random_patch_mask
from jaxalign.parallel import make_mesh
from jaxalign.tasks.mae import MAETask
from tests.trainer_child import losses, run_trainer

ROOT = pathlib.Path(__file__).resolve().parents[2]
TASKS = ("autoencoder", "mae")


def _spec(task):
    return str(ROOT / "configs" / f"{task}.py") + ":tiny"


def _overrides(data_dir, **extra):
    return [f"{k}={v}" for k, v in {"data.data_dir": data_dir, **extra}.items()]


@pytest.mark.parametrize("task", TASKS)
def test_one_device_equals_eight_for_ten_steps(task, builtin_data_dir, tmp_path):
    extra = {"train.steps": 10, "train.eval_every": 10, "train.checkpoint_every": 10}
    one = train.train_and_evaluate(
        config_lib.load(_spec(task), _overrides(builtin_data_dir, **extra)),
        tmp_path / "one",
        devices=jax.devices()[:1],
    )
    mesh = {"mesh.data": 2, "mesh.fsdp": 4}
    eight = train.train_and_evaluate(
        config_lib.load(_spec(task), _overrides(builtin_data_dir, **extra, **mesh)),
        tmp_path / "eight",
    )
    a, b = losses(tmp_path / "one"), losses(tmp_path / "eight")
    assert sorted(a) == list(range(1, 11))
    np.testing.assert_allclose([b[s] for s in a], list(a.values()), rtol=1e-5, atol=1e-6)
    assert a[10] < a[1]  # it learns
    for key in ("eval/probe/linear_top1", "eval/probe/knn_top1"):
        assert one[key] == pytest.approx(eight[key], abs=1e-6), key
    # The picture: a grid of 4 test images per row, 2 rows (autoencoder) or 3 (MAE), 3x size.
    picture = np.asarray(Image.open(tmp_path / "one" / "images" / "reconstructions_step10.png"))
    rows = 2 if task == "autoencoder" else 3
    assert picture.shape == (rows * (16 * 3 + 2) + 2, 4 * (16 * 3 + 2) + 2, 3)
    assert picture.std() > 10  # not a blank canvas


def test_sigkill_between_checkpoints_resumes_bit_for_bit(builtin_data_dir, tmp_path):
    # MAE: its masks come from the step's key. (The autoencoder's state and stream are the
    # same kinds as MAE's and the trainer's own tests': resuming them holds no new case.)
    task = "mae"
    extra = {
        "train.steps": 8,
        "train.checkpoint_every": 4,
        "train.eval_every": 8,
        "evals.grid_examples": 0,
        "evals.shots": "(2,)",
    }
    overrides = [f"--config.{o}" for o in _overrides(builtin_data_dir, **extra)]
    reference = run_trainer(_spec(task), tmp_path / "reference", overrides)
    assert reference.returncode == 0, reference.stderr[-3000:]
    workdir = tmp_path / "killed"
    killed = run_trainer(_spec(task), workdir, overrides, signal_at=6, after_checkpoint=4)
    assert killed.returncode == -9, killed.stderr[-3000:]
    resumed = run_trainer(_spec(task), workdir, overrides)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resumed from checkpoint 4" in resumed.stdout
    assert losses(workdir) == losses(tmp_path / "reference")  # bit for bit


@pytest.mark.parametrize("num_patches, ratio", [(16, 0.75), (64, 0.75), (49, 0.6), (10, 0.0)])
def test_mae_keeps_exactly_its_share_of_every_example(num_patches, ratio):
    keep, restore, mask = random_patch_mask(jax.random.key(3), 32, num_patches, ratio)
    k = kept_patches(num_patches, ratio)
    assert k == int(num_patches * (1 - ratio) + 1e-9) and keep.shape == (32, k)
    np.testing.assert_array_equal(np.sum(mask, axis=1), num_patches - k)
    for row in range(32):  # the kept patches are distinct, unmasked, and restore inverts
        assert len(set(np.asarray(keep[row]))) == k
        assert not np.any(np.asarray(mask[row])[np.asarray(keep[row])])
        order = np.concatenate([np.asarray(keep[row]), np.flatnonzero(mask[row])])
        np.testing.assert_array_equal(np.sort(order), np.arange(num_patches))
        np.testing.assert_array_equal(np.asarray(restore[row])[np.asarray(keep[row])], np.arange(k))
    # Each example's mask depends on its index, not on the batch it is in.
    _, _, first8 = random_patch_mask(jax.random.key(3), 8, num_patches, ratio)
    np.testing.assert_array_equal(first8, mask[:8])


def test_mae_masks_are_the_same_on_any_mesh():
    def masks(rng):
        return random_patch_mask(rng, 16, 16, 0.75)

    one = jax.jit(masks)(jax.random.key(5))
    mesh = make_mesh({"data": 2, "fsdp": 4}, jax.devices())
    sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(("data", "fsdp")))
    eight = jax.jit(masks, out_shardings=(sharding, sharding, sharding))(jax.random.key(5))
    for a, b in zip(one, eight, strict=True):
        np.testing.assert_array_equal(a, b)


def test_mae_encoder_sees_visible_patches_and_loss_reads_hidden_ones(builtin_data_dir):
    mesh = jax.sharding.Mesh(np.array(jax.devices()[:1]), ("data",))
    task = MAETask(config_lib.load(_spec("mae"), _overrides(builtin_data_dir)), mesh)
    images = jax.random.normal(jax.random.key(0), (4, 16, 16, 3))
    np.testing.assert_array_equal(unpatchify(patchify(images, 4), 4), images)
    params = jax.jit(task.init)(jax.random.key(1))["params"]
    rng = jax.random.key(2)
    keep, restore, mask = random_patch_mask(rng, 4, 16, 0.75)
    predict = jax.jit(lambda x: task.model.apply({"params": params}, x, keep, restore))
    prediction = predict(images)
    # Hidden pixels never reach the prediction: the encoder sees the visible patches only.
    moved = unpatchify(patchify(images, 4) + 3.0 * mask[..., None], 4)
    np.testing.assert_allclose(predict(moved), prediction, rtol=1e-6, atol=1e-6)
    # The loss is the mean squared error over the hidden patches (of normalised targets).
    error = np.mean(np.square(prediction - task.targets(images)), axis=-1)
    loss, _, metrics = jax.jit(task.loss)(params, {}, {"image": images}, rng, 0)
    np.testing.assert_allclose(loss, error[mask > 0].mean(), rtol=1e-5)
    np.testing.assert_allclose(metrics["visible_loss"], error[mask == 0].mean(), rtol=1e-5)


def test_bad_configs_are_refused():
    with pytest.raises(config_lib.ConfigError, match="MAE needs a ViT image tower"):
        config_lib.load(_spec("mae"), ["model.preset=tiny-cnn", "model.image.pool='mean'"])
    with pytest.raises(config_lib.ConfigError, match=r"data\.image_size=18: must be a multiple"):
        config_lib.load(_spec("autoencoder"), ["data.image_size=18"])
    with pytest.raises(config_lib.ConfigError, match=r"objective\.mask_ratio"):
        config_lib.load(_spec("mae"), ["objective.mask_ratio=1.0"])
    for task, presets in (
        ("autoencoder", ("digits", "imagenet64")),
        ("mae", ("digits", "vit_b16_imagenet")),
    ):
        for preset in presets:
            spec = str(ROOT / "configs" / f"{task}.py") + f":{preset}"
            config_lib.validate(config_lib.load(spec), 8, check_data=False)
