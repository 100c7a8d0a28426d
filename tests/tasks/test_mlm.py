"""Masked language modelling: BERT's rule (how many tokens, which kinds, the 80/10/10 split
within binomial 99% intervals over 10^5 tokens; special and padding tokens never chosen); the
task on its tiny preset: 1 device equals 8 (2x4) for 10 steps, exact resume after SIGKILL,
local text files, bad configs refused."""

from __future__ import annotations

import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from jaxalign import config as config_lib
from jaxalign import train
from jaxalign.data.text import TextLinesSource
from jaxalign.errors import DataError, MissingDataError
from jaxalign.interop import hf
from jaxalign.objectives.masking import bert_mask
from tests.trainer_child import losses, run_trainer, saved_subtree

SPEC = str(pathlib.Path(__file__).resolve().parents[2] / "configs" / "mlm.py") + ":tiny"
MASK, VOCAB = 4, 50


def _overrides(data_dir, **extra):
    return [f"{k}={v}" for k, v in {"data.data_dir": data_dir, **extra}.items()]


def _binomial_99(successes, trials, p):
    low, high = stats.binom.interval(0.99, trials, p)
    assert low <= successes <= high, (successes, trials, p, low, high)


def test_bert_rule_proportions_over_a_hundred_thousand_tokens():
    rows, length = 2600, 64
    rng = np.random.default_rng(0)
    ids = rng.integers(5, VOCAB, size=(rows, length)).astype(np.int32)
    real = rng.integers(20, length + 1, size=rows)  # padding after `real` tokens
    maskable = np.arange(length)[None, :] < real[:, None]
    maskable[:, 0] = False  # a special token ([CLS]) first in every row
    ids[:, 0] = 2
    ids[~maskable & (np.arange(length)[None, :] > 0)] = 0  # [PAD]
    corrupt = jax.jit(
        lambda key: bert_mask(
            key, jnp.asarray(ids), jnp.asarray(maskable), mask_token_id=MASK, vocab_size=VOCAB
        )
    )
    n = to_mask = unchanged = 0
    for seed in range(4):  # four fixed steps' keys, pooled: about 60,000 chosen tokens
        inputs, chosen = (np.asarray(x) for x in corrupt(jax.random.key(seed)))
        assert maskable.sum() > 100_000 and chosen.sum() > 15_000
        # Exactly round(0.15 m) per row, never a special or padding token.
        np.testing.assert_array_equal(chosen.sum(1), np.round(0.15 * maskable.sum(1)))
        assert not np.any(chosen & ~maskable)
        np.testing.assert_array_equal(inputs[~chosen], ids[~chosen])  # the rest untouched
        n += int(chosen.sum())
        to_mask += int(np.sum(inputs[chosen] == MASK))
        unchanged += int(np.sum(inputs[chosen] == ids[chosen]))
    # Of the chosen: 80% [MASK], 10% random, 10% unchanged (a random draw may hit the
    # original token or the mask id, 1 / VOCAB of the time each).
    _binomial_99(to_mask, n, 0.8 + 0.1 / VOCAB)
    _binomial_99(unchanged, n, 0.1 + 0.1 / VOCAB)
    _binomial_99(n - to_mask - unchanged, n, 0.1 * (1 - 2 / VOCAB))
    # Each position is equally likely to be chosen among a row's maskable tokens.
    _binomial_99(
        int(chosen[:, 1:10].sum()), int(maskable[:, 1:10].sum()), chosen.sum() / maskable.sum()
    )


def test_one_device_equals_eight_for_ten_steps(builtin_data_dir, tmp_path):
    extra = {"train.steps": 10, "train.eval_every": 10, "train.checkpoint_every": 10}
    one = train.train_and_evaluate(
        config_lib.load(SPEC, _overrides(builtin_data_dir, **extra)),
        tmp_path / "one",
        devices=jax.devices()[:1],
    )
    eight = train.train_and_evaluate(
        config_lib.load(
            SPEC, _overrides(builtin_data_dir, **extra, **{"mesh.data": 2, "mesh.fsdp": 4})
        ),
        tmp_path / "eight",
    )
    a, b = losses(tmp_path / "one"), losses(tmp_path / "eight")
    assert sorted(a) == list(range(1, 11))
    np.testing.assert_allclose([b[s] for s in a], list(a.values()), rtol=1e-5, atol=1e-6)
    for key in ("eval/mlm/accuracy", "eval/mlm/perplexity", "eval/mlm/majority_accuracy"):
        assert one[key] == pytest.approx(eight[key], rel=1e-5), key
    assert one["eval/mlm/chosen_tokens"] > 0 and 0 < one["eval/mlm/majority_accuracy"] < 1


def test_sigkill_between_checkpoints_resumes_bit_for_bit(builtin_data_dir, tmp_path):
    extra = {"train.steps": 8, "train.checkpoint_every": 4, "train.eval_every": 8}
    overrides = [f"--config.{o}" for o in _overrides(builtin_data_dir, **extra)]
    reference = run_trainer(SPEC, tmp_path / "reference", overrides)
    assert reference.returncode == 0, reference.stderr[-3000:]
    killed = run_trainer(SPEC, tmp_path / "killed", overrides, signal_at=6, after_checkpoint=4)
    assert killed.returncode == -9, killed.stderr[-3000:]
    resumed = run_trainer(SPEC, tmp_path / "killed", overrides)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert losses(tmp_path / "killed") == losses(tmp_path / "reference")  # bit for bit


def test_starts_from_a_local_bert_checkpoint(builtin_data_dir, tmp_path, capsys):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    tokenizer = hf.load_tokenizer(pathlib.Path(builtin_data_dir) / "shapes_captions_tokenizer")
    bert_config = transformers.BertConfig(
        vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
        intermediate_size=64, max_position_embeddings=32, type_vocab_size=2,
    )  # fmt: skip
    torch.manual_seed(0)
    bert = transformers.BertForMaskedLM(bert_config)
    with torch.no_grad():  # every tensor off its init, so one left behind cannot pass
        for p in bert.parameters():
            p.add_(0.1 * torch.randn_like(p))
    bert.save_pretrained(tmp_path / "bert")
    extra = {
        "model.init_from_bert": str(tmp_path / "bert"),
        "model.text.pre_norm": False,
        "model.text.type_vocab_size": 2,
        "model.text.ln_eps": 1e-12,
        "train.steps": 2,
        "train.checkpoint_every": 1,
        "train.eval_every": 2,
    }
    config = config_lib.load(SPEC, _overrides(builtin_data_dir, **extra))
    train.train_and_evaluate(config, tmp_path / "run", devices=jax.devices()[:1])
    # Linear warmup from 0: the first update is zero, so checkpoint 1 holds the loaded values.
    _, want = hf.load_bert_mlm(tmp_path / "bert")
    want["params"]["text"]["pos_embedding"] = want["params"]["text"]["pos_embedding"][:16]
    saved = saved_subtree(tmp_path / "run", "params", step=1)
    jax.tree.map(np.testing.assert_array_equal, saved, want["params"])
    assert "model.init_from_bert" in capsys.readouterr().out
    for key, value, message in [
        ("model.text.width", 64, r"has width=32; set model\.text\.width=32 \(now 64\)"),
        ("data.max_len", 48, r"has 32 positions; data\.max_len=48 is longer"),
    ]:
        bad = config_lib.load(SPEC, _overrides(builtin_data_dir, **{**extra, key: value}))
        with pytest.raises(config_lib.ConfigError, match=message):
            train.train_and_evaluate(bad, tmp_path / key, devices=jax.devices()[:1])


def test_local_text_files(builtin_data_dir, tmp_path):
    (tmp_path / "a.txt").write_text("a red circle\n\n  a blue square  \n")
    (tmp_path / "b.txt").write_text("a green triangle on the left\n")
    source = TextLinesSource(str(tmp_path / "*.txt"))
    assert len(source) == 3 and source[1] == {"text": "a blue square"}
    tokenizer = str(pathlib.Path(builtin_data_dir) / "shapes_captions_tokenizer")
    extra = {
        "data.source": "text_files",
        "data.train_split": str(tmp_path / "*.txt"),
        "data.text_key": "text",
        "data.tokenizer": tokenizer,
        "evals.split": str(tmp_path / "b.txt"),
        "train.steps": 2,
        "train.eval_every": 2,
    }
    summary = train.train_and_evaluate(
        config_lib.load(SPEC, _overrides(builtin_data_dir, **extra)),
        tmp_path / "run",
        devices=jax.devices()[:1],
    )
    assert summary["eval/mlm/chosen_tokens"] == 1  # round(0.15 * 6 words)
    (tmp_path / "bad.txt").write_bytes(b"ok\n\xff\xfe\n")
    with pytest.raises(DataError, match=r"bad\.txt: not UTF-8"):
        TextLinesSource(str(tmp_path / "bad.txt"))
    with pytest.raises(MissingDataError, match="no text file matches"):
        TextLinesSource(str(tmp_path / "none*.txt"))


def test_bad_configs_are_refused():
    with pytest.raises(config_lib.ConfigError, match=r"model\.text\.causal: must be False"):
        config_lib.load(SPEC, ["model.text.causal=True"])
    with pytest.raises(config_lib.ConfigError, match=r"tokenizer='': data\.source='text_files'"):
        config_lib.load(SPEC, ["data.source=text_files"])
    with pytest.raises(config_lib.ConfigError, match=r"model\.text\.vocab_size"):
        config_lib.load(SPEC, ["model.text.vocab_size=10"])
    for preset in ("captions", "bert_base_text"):
        spec = SPEC.replace(":tiny", f":{preset}")
        config_lib.validate(config_lib.load(spec), 8, check_data=False)
