"""A new task written here, against the task protocol alone, trains through the real trainer:
no change to ``config.py``, ``train.py`` or ``train_lib/``. Its loss uses the step's random key
and the step number, its model keeps a non-parameter collection (a running mean, updated by
the loss), and its stream is a plain Python class. 1 device = 8 devices; a SIGKILL between
checkpoints resumes bit for bit; the registry refuses a name clash.

This file is also the task's config file (``get_config``), so a child process can run it:
``jaxalign train --config=tests/tasks/test_protocol.py:tiny``.
"""

from __future__ import annotations

import itertools
import json
import pathlib
from typing import Any, Literal

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from jaxalign import config as config_lib
from jaxalign import train
from jaxalign.models.layers import dense
from jaxalign.schema import ExperimentConfig, Group, NonNegativeFloat, PositiveInt
from jaxalign.tasks import TASKS, Task, register_task
from jaxalign.train_lib.metric_writers import read_metrics
from tests.trainer_child import losses, run_trainer

THIS = pathlib.Path(__file__).resolve()


class ToyModelConfig(Group):
    width: PositiveInt
    input_noise: NonNegativeFloat


class ToyDataConfig(Group):
    num_examples: PositiveInt
    dim: PositiveInt


class ToyConfig(ExperimentConfig):
    task: Literal["toy_regression"]
    model: ToyModelConfig
    data: ToyDataConfig

    def rules(self) -> list[str]:
        if self.data.num_examples < self.train.global_batch_size:
            return [f"data.num_examples={self.data.num_examples}: fewer than one batch"]
        return []


class Regressor(nn.Module):
    """``[batch, dim] -> [batch]``: an MLP plus the running mean of the targets (collection
    ``stats``, updated when targets are given and the collection is mutable)."""

    width: int

    @nn.compact
    def __call__(self, x, targets=None):
        mean = self.variable("stats", "target_mean", jnp.zeros, ())
        if targets is not None and self.is_mutable_collection("stats"):
            mean.value = 0.9 * mean.value + 0.1 * jnp.mean(targets)
        h = nn.relu(dense(self.width, ("embed", "mlp"), name="hidden")(x))
        return dense(1, ("mlp", None), name="out")(h)[:, 0] + mean.value


def _dataset(seed: int, num_examples: int, dim: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng([seed, 17])
    x = rng.normal(size=(num_examples, dim)).astype(np.float32)
    y = (np.sin(x[:, 0]) + x[:, 1] ** 2 + 1.5).astype(np.float32)
    return x, y


class ToyStream:
    """Batches ``{"x": [b, dim], "y": [b]}`` walking a fixed dataset in order, forever; this
    process's share of each global batch."""

    def __init__(self, x: np.ndarray, y: np.ndarray, global_batch: int):
        self.x, self.y = x, y
        self.size = global_batch // jax.process_count()
        self.offset = jax.process_index() * self.size
        self.global_batch = global_batch

    def __iter__(self) -> ToyStream.Iterator:
        return ToyStream.Iterator(self)

    class Iterator:
        def __init__(self, stream: ToyStream):
            self.stream, self.batches = stream, 0

        def __next__(self) -> dict[str, np.ndarray]:
            s = self.stream
            start = self.batches * s.global_batch + s.offset
            index = np.arange(start, start + s.size) % len(s.x)
            self.batches += 1
            return {"x": s.x[index], "y": s.y[index]}

        def get_state(self) -> dict[str, Any]:
            return {"batches": self.batches}

        def set_state(self, state: dict[str, Any]) -> None:
            self.batches = int(state["batches"])

        def close(self) -> None:
            pass


@register_task
class ToyRegression(Task):
    """Regression with input noise keyed by the step's random key, and a loss weight that
    grows with the step number."""

    name = "toy_regression"
    Config = ToyConfig

    def __init__(self, config: ToyConfig, mesh):
        self.config, self.mesh = config, mesh
        self.model = Regressor(config.model.width)
        self.x, self.y = _dataset(config.seed, config.data.num_examples, config.data.dim)

    def train_stream(self):
        return ToyStream(self.x, self.y, self.config.train.global_batch_size)

    def batch_spec(self):
        batch = self.config.train.global_batch_size
        return {
            "x": jax.ShapeDtypeStruct((batch, self.config.data.dim), jnp.float32),
            "y": jax.ShapeDtypeStruct((batch,), jnp.float32),
        }

    def init(self, rng):
        return self.model.init(rng, jnp.zeros((1, self.config.data.dim)))

    def loss(self, params, model_state, batch, rng, step):
        x = batch["x"] + self.config.model.input_noise * jax.random.normal(rng, batch["x"].shape)
        pred, model_state = self.model.apply(
            {"params": params, **model_state}, x, batch["y"], mutable=["stats"]
        )
        weight = 1.0 + step / self.config.train.steps
        loss = weight * jnp.mean((pred - batch["y"]) ** 2)
        metrics = {
            "target_mean": model_state["stats"]["target_mean"],
            "step_seen": step,
            "key_draw": jax.random.uniform(rng),
        }
        return loss, model_state, metrics

    def evaluate(self, variables, *, progress=False):
        pred = self.model.apply(variables, jnp.asarray(self.x))
        return {"mse": float(jnp.mean((pred - self.y) ** 2))}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """``tiny``: 10 steps, a checkpoint every 3."""
    del arg
    config = ml_collections.ConfigDict()
    config.seed = 3
    config.task = "toy_regression"
    config.init_from = config_lib.init_from_off()
    config.model = ml_collections.ConfigDict(dict(width=32, input_noise=0.3))
    config.data = ml_collections.ConfigDict(dict(num_examples=96, dim=4))
    config.optim = ml_collections.ConfigDict(
        dict(
            name="adamw",
            lr=3e-2,
            warmup_steps=2,
            min_lr_ratio=0.1,
            weight_decay=0.01,
            b1=0.9,
            b2=0.99,
            eps=1e-8,
            clip_norm=1.0,
            micro_batches=1,
            max_nonfinite_in_a_row=3,
            ema_decay=0.5,
        )
    )
    config.train = ml_collections.ConfigDict(
        dict(
            global_batch_size=32,
            steps=10,
            log_every=1,
            checkpoint_every=3,
            keep_checkpoints=2,
            eval_every=5,
            max_failed_saves=3,
            timing_in_metrics=True,
        )
    )
    config.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1, tensor=1))
    return config


def _config(**overrides):
    return config_lib.load(f"{THIS}:tiny", [f"{k}={v}" for k, v in overrides.items()])


def test_the_task_is_registered_and_its_schema_checks_its_keys():
    assert TASKS["toy_regression"].Config.__name__ == "ToyConfig"
    with pytest.raises(config_lib.ConfigError, match=r"config\.model\.widht"):
        _config(**{"model.widht": 3})
    with pytest.raises(config_lib.ConfigError, match=r"config\.data\.num_examples=8"):
        _config(**{"data.num_examples": 8})


def test_a_clashing_name_is_refused():
    class Other(ToyRegression):
        pass

    with pytest.raises(ValueError, match="already registered"):
        register_task(Other)
    assert TASKS["toy_regression"].__qualname__ == "ToyRegression"


def test_one_device_equals_eight(tmp_path):
    one = train.train_and_evaluate(_config(), tmp_path / "one", devices=jax.devices()[:1])
    eight = train.train_and_evaluate(_config(), tmp_path / "eight")
    assert json.loads((tmp_path / "eight" / "env.json").read_text())["mesh"]["data"] == 8
    losses_one, losses_eight = losses(tmp_path / "one"), losses(tmp_path / "eight")
    assert sorted(losses_one) == list(range(1, 11))
    np.testing.assert_allclose(
        [losses_eight[s] for s in range(1, 11)], [losses_one[s] for s in range(1, 11)], rtol=1e-5
    )
    assert losses_one[10] < losses_one[1]  # it learns
    assert one["eval/mse"] == pytest.approx(eight["eval/mse"], rel=1e-4)
    for run in ("one", "eight"):
        rows = [r for r in read_metrics(tmp_path / run) if "loss" in r]
        means = [r["target_mean"] for r in rows]
        assert means[0] > 0 and all(b > a for a, b in itertools.pairwise(means))  # model state
        for row in rows:  # step s (1-based in the log) saw step s - 1 and its key
            key = jax.random.fold_in(jax.random.key(3), row["step"] - 1)
            assert row["step_seen"] == row["step"] - 1
            assert row["key_draw"] == float(jax.random.uniform(key))


def test_the_key_changes_the_losses(tmp_path):
    """The input noise drawn from the step's key changes the losses, and so does the seed."""
    plain = train.train_and_evaluate(_config(), tmp_path / "a", devices=jax.devices()[:1])
    quiet = train.train_and_evaluate(
        _config(**{"model.input_noise": 0.0}), tmp_path / "b", devices=jax.devices()[:1]
    )
    assert losses(tmp_path / "a")[1] != losses(tmp_path / "b")[1]
    other_seed = train.train_and_evaluate(
        _config(**{"seed": 4}), tmp_path / "c", devices=jax.devices()[:1]
    )
    assert plain["eval/mse"] != quiet["eval/mse"]
    assert plain["eval/mse"] != other_seed["eval/mse"]
    assert losses(tmp_path / "a")[1] != losses(tmp_path / "c")[1]


def test_sigkill_between_checkpoints_resumes_bit_for_bit(tmp_path):
    spec = f"{THIS}:tiny"
    reference = run_trainer(spec, tmp_path / "ref", [])
    assert reference.returncode == 0, reference.stderr[-3000:]
    killed = run_trainer(spec, tmp_path / "run", [], signal_at=8, after_checkpoint=6)
    assert killed.returncode == -9, killed.stderr[-3000:]
    assert max(losses(tmp_path / "run")) == 8
    resumed = run_trainer(spec, tmp_path / "run", [])
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resumed from checkpoint 6" in resumed.stdout
    assert losses(tmp_path / "run") == losses(tmp_path / "ref")  # float for float
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    reference_mse = json.loads((tmp_path / "ref" / "summary.json").read_text())["eval/mse"]
    assert summary["eval/mse"] == reference_mse


def test_eval_of_a_task_defined_in_a_config_file(tmp_path, capsys, monkeypatch):
    from jaxalign import cli

    train.train_and_evaluate(_config(), tmp_path, devices=jax.devices()[:1])
    monkeypatch.delitem(TASKS, "toy_regression")  # as in a fresh process
    assert cli.main(["eval", f"--workdir={tmp_path}"]) == 2
    assert "--config=FILE.py" in capsys.readouterr().err
    assert cli.main(["eval", f"--workdir={tmp_path}", f"--config={THIS}"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["step"] == 10 and printed["eval/mse"] > 0
