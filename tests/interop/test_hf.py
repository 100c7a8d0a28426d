"""Hugging Face interop against the PyTorch reference: small random CLIP and BERT models saved
with transformers, loaded into our Flax modules, give the same features (and a saved CLIP loads
back into transformers); malformed checkpoints fail with messages that name the problem."""

import json
import re
import shutil

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

import jax  # noqa: E402  (after the skips: the module needs the torch extra)
import safetensors.numpy  # noqa: E402

from jaxalign.errors import DataError, MissingDataError  # noqa: E402
from jaxalign.interop import hf, tensor_map  # noqa: E402

TOL = dict(rtol=1e-4, atol=1e-4)
VOCAB, MAX_LEN, EOS, TOP, IMAGE = 100, 16, 60, 99, 32


def _randomise(model, seed):
    """Every parameter moved off its init (LayerNorm scales off 1, biases off 0), so a mapping
    that swaps or drops a tensor cannot pass."""
    torch.manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return model.eval()


def _clip(eos_token_id, text_act="quick_gelu", vision_act="quick_gelu", seed=0):
    config = transformers.CLIPConfig(
        text_config=dict(
            vocab_size=VOCAB,
            hidden_size=48,
            intermediate_size=96,
            num_hidden_layers=2,
            num_attention_heads=4,
            max_position_embeddings=MAX_LEN,
            hidden_act=text_act,
            eos_token_id=eos_token_id,
            bos_token_id=VOCAB - 2,
            pad_token_id=0,
        ),
        vision_config=dict(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            image_size=IMAGE,
            patch_size=8,
            hidden_act=vision_act,
        ),
        projection_dim=24,
        logit_scale_init_value=2.5,
    )
    torch.manual_seed(seed)
    return _randomise(transformers.CLIPModel(config), seed)


# name -> (config, the end-of-text token in the inputs). eos_token_id 60: pooled at the first
# 60, though larger ids occur (so argmax pooling would fail); 2: the legacy path, pooled at the
# highest id, as old OpenAI CLIP configs (whose <|endoftext|> is the top id) expect.
CLIP_CASES = {
    "eos": (dict(eos_token_id=EOS), EOS),
    "legacy_argmax": (dict(eos_token_id=2, text_act="gelu_pytorch_tanh", vision_act="gelu"), TOP),
}


@pytest.fixture(scope="module", params=sorted(CLIP_CASES))
def clip_dir(request, tmp_path_factory):
    """``(torch CLIPModel, directory it was saved to, the inputs' end-of-text token)``."""
    config, eos = CLIP_CASES[request.param]
    model = _clip(**config)
    path = tmp_path_factory.mktemp(f"clip_{request.param}")
    model.save_pretrained(path)
    return model, path, eos


def _inputs(eos=EOS):
    """Images NHWC ``[2, 32, 32, 3]``; ids / mask ``[3, 12]``: ``eos`` at 5, 11, 8; padding 0
    after it, except row 2, padded with ``eos`` itself (pooling must take the first)."""
    rng = np.random.default_rng(0)
    images = rng.normal(size=(2, IMAGE, IMAGE, 3)).astype(np.float32)
    ids = rng.integers(3, TOP - 1, size=(3, 12))
    ids[ids == eos] += 1
    mask = np.ones_like(ids)
    for row, (at, pad) in enumerate([(5, 0), (11, 0), (8, eos)]):
        ids[row, at] = eos
        ids[row, at + 1 :] = pad
        mask[row, at + 1 :] = 0
    return images, ids.astype(np.int32), mask.astype(np.int32)


def _features(out):
    """transformers 5 returns a model output from ``get_*_features``; older ones a tensor."""
    out = getattr(out, "pooler_output", out)
    return out.detach().numpy()


def _torch_features(model, images, ids, mask):
    with torch.no_grad():
        image = model.get_image_features(
            pixel_values=torch.from_numpy(images.transpose(0, 3, 1, 2))
        )
        text = model.get_text_features(
            input_ids=torch.from_numpy(ids).long(), attention_mask=torch.from_numpy(mask).long()
        )
    return _features(image), _features(text)


def _our_features(model, variables, images, ids, mask):
    apply = jax.jit(model.apply, static_argnames="method")  # one compile per tower
    image, image_out = apply(variables, images, method="encode_image")
    text, text_out = apply(variables, ids, mask, method="encode_text")
    return image, image_out["img/projected"], text, text_out["txt/projected"]


def _unit(x):
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def test_load_clip_matches_transformers(clip_dir):
    torch_model, path, eos = clip_dir
    model, variables = hf.load_clip(path)
    images, ids, mask = _inputs(eos)
    want_image, want_text = _torch_features(torch_model, images, ids, mask)
    image, image_proj, text, text_proj = _our_features(model, variables, images, ids, mask)
    np.testing.assert_allclose(image_proj, want_image, **TOL)
    np.testing.assert_allclose(text_proj, want_text, **TOL)
    np.testing.assert_allclose(image, _unit(want_image), **TOL)
    np.testing.assert_allclose(text, _unit(want_text), **TOL)
    np.testing.assert_allclose(variables["params"]["logit_scale"], torch_model.logit_scale.item())
    legacy = torch_model.config.text_config.eos_token_id == 2
    assert model.text_tower.pool == ("argmax" if legacy else "eot")
    assert all(isinstance(x, np.ndarray) for x in jax.tree.leaves(variables))


def test_save_clip_round_trips_through_transformers(clip_dir, tmp_path):
    torch_model, path, eos = clip_dir
    model, variables = hf.load_clip(path)
    hf.save_clip(model, variables, tmp_path)
    reloaded = transformers.CLIPModel.from_pretrained(tmp_path).eval()
    assert reloaded.config.text_config.eos_token_id == torch_model.config.text_config.eos_token_id
    inputs = _inputs(eos)
    for got, want in zip(
        _torch_features(reloaded, *inputs), _torch_features(torch_model, *inputs), strict=True
    ):
        np.testing.assert_allclose(got, want, **TOL)
    _, again = hf.load_clip(tmp_path)
    jax.tree.map(np.testing.assert_array_equal, again, variables)


def test_load_clip_sharded_and_bfloat16(tmp_path):
    torch_model = _clip(EOS)
    torch_model.save_pretrained(tmp_path / "full")
    torch_model.save_pretrained(tmp_path / "sharded", max_shard_size="50KB")
    assert (tmp_path / "sharded" / tensor_map.SAFETENSORS_INDEX).is_file()
    _, full = hf.load_clip(tmp_path / "full")
    _, sharded = hf.load_clip(tmp_path / "sharded")
    jax.tree.map(np.testing.assert_array_equal, sharded, full)
    torch_model.to(torch.bfloat16).save_pretrained(tmp_path / "bf16")
    _, bf16 = hf.load_clip(tmp_path / "bf16")
    assert {x.dtype for x in jax.tree.leaves(bf16)} == {np.dtype(np.float32)}
    rounded = jax.tree.map(lambda x: np.asarray(x.astype(jax.numpy.bfloat16), np.float32), full)
    jax.tree.map(np.testing.assert_array_equal, bf16, rounded)


# --- BERT --------------------------------------------------------------------------------------


def _bert_config():
    return transformers.BertConfig(
        vocab_size=VOCAB,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=MAX_LEN,
        type_vocab_size=2,
    )


@pytest.mark.parametrize("cls", ["BertModel", "BertForMaskedLM"])
def test_load_bert_matches_transformers(cls, tmp_path):
    torch.manual_seed(1)
    torch_model = _randomise(getattr(transformers, cls)(_bert_config()), seed=1)
    torch_model.save_pretrained(tmp_path)
    bert = torch_model if cls == "BertModel" else torch_model.bert
    rng = np.random.default_rng(1)
    ids = rng.integers(1, VOCAB, size=(3, 10)).astype(np.int32)
    types = (np.arange(10)[None] >= 4).astype(np.int32).repeat(3, 0)
    mask = np.ones_like(ids)
    mask[1, 6:] = 0
    mask[2, 3:] = 0
    with torch.no_grad():
        want = bert(
            input_ids=torch.from_numpy(ids).long(),
            attention_mask=torch.from_numpy(mask).long(),
            token_type_ids=torch.from_numpy(types).long(),
        ).last_hidden_state.numpy()
    model, variables = hf.load_bert(tmp_path)
    assert (model.causal, model.pre_norm, model.pool) == (False, False, "first")
    pooled, out = jax.jit(model.apply)(variables, ids, mask, types)
    real = mask.astype(bool)
    np.testing.assert_allclose(np.asarray(out["encoded"])[real], want[real], **TOL)
    np.testing.assert_allclose(pooled, want[:, 0], **TOL)


def test_load_bert_mlm_matches_masked_lm_logits(tmp_path):
    torch_model = _randomise(transformers.BertForMaskedLM(_bert_config()), seed=2)
    torch_model.save_pretrained(tmp_path / "mlm")
    ids = np.random.default_rng(2).integers(1, VOCAB, size=(2, 9)).astype(np.int32)
    mask = np.ones_like(ids)
    mask[1, 5:] = 0
    with torch.no_grad():
        want = torch_model(
            input_ids=torch.from_numpy(ids).long(), attention_mask=torch.from_numpy(mask).long()
        ).logits.numpy()
    model, variables = hf.load_bert_mlm(tmp_path / "mlm")
    assert set(variables["params"]) == {"text", "mlm_head"}
    logits = np.asarray(jax.jit(model.apply)(variables, ids, mask))
    assert logits.shape == (2, 9, VOCAB)
    real = mask.astype(bool)
    np.testing.assert_allclose(logits[real], want[real], **TOL)
    # A BertModel has no head: the tower alone, the head left to the caller.
    transformers.BertModel(_bert_config()).save_pretrained(tmp_path / "bare")
    _, bare = hf.load_bert_mlm(tmp_path / "bare")
    assert set(bare["params"]) == {"text"}
    # An output layer that is not the word embeddings is refused, not silently tied.
    weights = safetensors.numpy.load_file(tmp_path / "mlm" / tensor_map.SAFETENSORS)
    table = weights["bert.embeddings.word_embeddings.weight"]
    weights["cls.predictions.decoder.weight"] = table + 1
    safetensors.numpy.save_file(weights, tmp_path / "mlm" / tensor_map.SAFETENSORS)
    with pytest.raises(DataError, match=r"decoder\.weight is not tied"):
        hf.load_bert_mlm(tmp_path / "mlm")


# --- errors ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def clip_copy(tmp_path_factory):
    """A factory: a fresh copy of a small CLIP checkpoint directory."""
    source = tmp_path_factory.mktemp("clip_source")
    _clip(EOS).save_pretrained(source)

    def copy(dest):
        shutil.copytree(source, dest)
        return dest

    return copy


def _edit_weights(path, edit):
    file = path / tensor_map.SAFETENSORS
    tensors = safetensors.numpy.load_file(file)
    edit(tensors)
    safetensors.numpy.save_file(tensors, file, metadata={"format": "pt"})


def test_wrong_shape_names_key_file_and_shapes(clip_copy, tmp_path):
    path = clip_copy(tmp_path / "ckpt")
    key = "text_model.encoder.layers.1.mlp.fc1.weight"
    _edit_weights(path, lambda t: t.update({key: np.zeros((95, 48), np.float32)}))
    with pytest.raises(ValueError, match=re.escape(key)) as info:
        hf.load_clip(path)
    message = str(info.value)
    assert tensor_map.SAFETENSORS in message and "[96, 48]" in message and "[95, 48]" in message


def test_missing_and_unknown_tensors_are_named(clip_copy, tmp_path):
    missing = clip_copy(tmp_path / "missing")
    _edit_weights(missing, lambda t: t.pop("vision_model.post_layernorm.bias"))
    with pytest.raises(ValueError, match=re.escape("vision_model.post_layernorm.bias")):
        hf.load_clip(missing)
    unknown = clip_copy(tmp_path / "unknown")
    _edit_weights(unknown, lambda t: t.update({"text_model.extra.weight": np.zeros(3, np.float32)}))
    with pytest.raises(ValueError, match=re.escape("text_model.extra.weight")):
        hf.load_clip(unknown)
    buffers = clip_copy(tmp_path / "buffers")  # older releases saved the position-id buffers
    ids = {k: np.arange(n)[None] for k, n in zip(hf.CLIP_BUFFERS, (MAX_LEN, 17), strict=True)}
    _edit_weights(buffers, lambda t: t.update(ids))
    hf.load_clip(buffers)


def test_pickle_checkpoints_are_refused(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "clip"}))
    (tmp_path / "pytorch_model.bin").write_bytes(b"never unpickled")
    with pytest.raises(ValueError, match=r"pickle checkpoints are not loaded.*safetensors"):
        hf.load_clip(tmp_path)
    with pytest.raises(ValueError, match="pickle"):
        hf.load_bert(tmp_path)


def test_missing_paths_raise_missing_data_error(clip_copy, tmp_path):
    for load in (hf.load_clip, hf.load_bert, hf.load_tokenizer):
        with pytest.raises(MissingDataError, match=re.escape(str(tmp_path / "absent"))):
            load(tmp_path / "absent")
    path = clip_copy(tmp_path / "no_config")
    (path / "config.json").unlink()
    with pytest.raises(MissingDataError, match=re.escape(str(path / "config.json"))):
        hf.load_clip(path)


def test_wrong_model_type_is_refused(clip_copy, tmp_path):
    with pytest.raises(ValueError, match="model_type 'clip'"):
        hf.load_bert(clip_copy(tmp_path / "clip"))


def _fails(load, path, error, file, *reasons):
    """``load(path)`` raises ``error`` whose message starts with ``file`` and holds ``reasons``."""
    with pytest.raises(error) as info:
        load(path)
    message = str(info.value)
    assert message.startswith(f"{file}") and all(r in message for r in reasons), message
    assert "\n" not in message, message


# None: the saved config.json cut in half
BAD_JSON = {"bad": '{"model_type": "clip",', "empty": "", "list": "[1, 2]", "truncated": None}


@pytest.mark.parametrize("case", sorted(BAD_JSON))
@pytest.mark.parametrize("load", [hf.load_clip, hf.load_bert])
def test_malformed_config_json_is_a_data_error(load, case, clip_copy, tmp_path):
    path = clip_copy(tmp_path / "ckpt")
    text = (path / "config.json").read_text()
    (path / "config.json").write_text(
        text[: len(text) // 2] if case == "truncated" else BAD_JSON[case]
    )
    reason = "expected a JSON object" if case == "list" else "not valid JSON"
    _fails(load, path, DataError, path / "config.json", reason)


# config.json values the loaders cannot use: (loader, JSON, words the message must hold); JSON
# without a model_type is merged into the saved CLIP config.
BAD_CONFIGS = {
    "no_model_type": (hf.load_clip, {}, ["model_type None"]),
    "clip_null_image_size": (
        hf.load_clip,
        {"model_type": "clip", "vision_config": {"image_size": None}},
        ["vision_config.image_size", "None"],
    ),
    "clip_vision_config_str": (
        hf.load_clip,
        {"model_type": "clip", "vision_config": "x"},
        ["vision_config"],
    ),
    "clip_bad_act": (
        hf.load_clip,
        {"text_config": {"hidden_act": "swish"}},
        ["hidden_act 'swish'"],
    ),
    "bert_null_layers": (
        hf.load_bert,
        {"model_type": "bert", "num_hidden_layers": None},
        ["num_hidden_layers"],
    ),
    "bert_str_width": (hf.load_bert, {"model_type": "bert", "hidden_size": "big"}, ["hidden_size"]),
}


@pytest.mark.parametrize("case", sorted(BAD_CONFIGS))
def test_unusable_config_values_are_data_errors(case, clip_copy, tmp_path):
    load, values, reasons = BAD_CONFIGS[case]
    path = clip_copy(tmp_path / "ckpt")
    if values and "model_type" not in values:
        saved = json.loads((path / "config.json").read_text())
        values = {**saved, "text_config": {**saved["text_config"], **values["text_config"]}}
    (path / "config.json").write_text(json.dumps(values))
    _fails(load, path, DataError, path / "config.json", *reasons)


def _corrupt(file, how):
    data = file.read_bytes()
    file.write_bytes({"truncated": data[: len(data) // 2], "garbage": b"\x00garbage" * 9}[how])


@pytest.mark.parametrize("how", ["truncated", "garbage"])
def test_corrupt_safetensors_is_a_data_error(how, clip_copy, tmp_path):
    path = clip_copy(tmp_path / "clip")
    _corrupt(path / tensor_map.SAFETENSORS, how)
    reason = "not a readable safetensors file (truncated or corrupt: "
    _fails(hf.load_clip, path, DataError, path / tensor_map.SAFETENSORS, reason)
    bert = tmp_path / "bert"  # a BERT config.json, and weights to corrupt
    bert.mkdir()
    _bert_config().to_json_file(bert / "config.json")
    safetensors.numpy.save_file({"x": np.zeros((64, 64), np.float32)}, bert / "model.safetensors")
    _corrupt(bert / tensor_map.SAFETENSORS, how)
    _fails(hf.load_bert, bert, DataError, bert / tensor_map.SAFETENSORS, reason)


@pytest.fixture(scope="module")
def sharded_copy(tmp_path_factory):
    """A factory: a fresh copy of a small CLIP checkpoint in several shards."""
    source = tmp_path_factory.mktemp("clip_sharded")
    _clip(EOS).save_pretrained(source, max_shard_size="50KB")
    return lambda dest: shutil.copytree(source, dest)


def test_sharded_checkpoint_problems_name_the_file(sharded_copy, tmp_path):
    path = sharded_copy(tmp_path / "bad_index")
    index = path / tensor_map.SAFETENSORS_INDEX
    values = json.loads(index.read_text())
    index.write_text(index.read_text()[:40])
    _fails(hf.load_clip, path, DataError, index, "not valid JSON")
    index.write_text(json.dumps({"metadata": {}}))
    _fails(hf.load_clip, path, DataError, index, "weight_map")
    index.write_text(json.dumps({"weight_map": {"a": 3}}))
    _fails(hf.load_clip, path, DataError, index, "weight_map")
    shard = path / sorted(set(values["weight_map"].values()))[-1]
    index.write_text(json.dumps(values))
    shard.unlink()
    _fails(hf.load_clip, path, MissingDataError, f"shard {shard}", f"listed in {index}")
    path = sharded_copy(tmp_path / "bad_shard")
    _corrupt(shard := path / shard.name, "truncated")
    _fails(hf.load_clip, path, DataError, shard, "not a readable safetensors file")


# --- tokenizers --------------------------------------------------------------------------------


def _save_tokenizer(path):
    """A small word-level fast tokenizer saved to ``path``; returns it."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    tok = Tokenizer(models.WordLevel(unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    sentences = ["a photo of a cat", "a photo of a dog", "a drawing of a bird"]
    tok.train_from_iterator(sentences, trainers.WordLevelTrainer(special_tokens=["[PAD]", "[UNK]"]))
    fast = transformers.PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]"
    )
    fast.save_pretrained(path)
    return fast


def test_load_tokenizer_round_trips(tmp_path):
    fast = _save_tokenizer(tmp_path)
    loaded = hf.load_tokenizer(tmp_path)
    batch = loaded(["a photo of a cat", "a zebra"], padding=True)
    assert batch["input_ids"] == fast(["a photo of a cat", "a zebra"], padding=True)["input_ids"]
    assert batch["input_ids"][1][1] == loaded.unk_token_id
    assert batch["attention_mask"][1] == [1, 1, 0, 0, 0]
    (tmp_path / "empty").mkdir()
    with pytest.raises(MissingDataError, match="no tokenizer files"):
        hf.load_tokenizer(tmp_path / "empty")


# (file, contents, words the message must hold); None: the saved file cut in half
BAD_TOKENIZERS = {
    "truncated": ("tokenizer.json", None, ["not valid JSON"]),
    "empty": ("tokenizer.json", "", ["not valid JSON"]),
    "list": ("tokenizer.json", "[1]", ["expected a JSON object"]),
    "no_model": ("tokenizer.json", "{}", ["not a tokenizers file", "Model missing"]),
    "config_bad_json": ("tokenizer_config.json", "{bad", ["not valid JSON"]),
    "config_list": ("tokenizer_config.json", "[]", ["expected a JSON object"]),
}


@pytest.mark.parametrize("case", sorted(BAD_TOKENIZERS))
def test_malformed_tokenizer_files_are_data_errors(case, tmp_path):
    name, contents, reasons = BAD_TOKENIZERS[case]
    _save_tokenizer(tmp_path)
    file = tmp_path / name
    if contents is None:
        contents = file.read_text()[: len(file.read_text()) // 2]
    file.write_text(contents)
    _fails(hf.load_tokenizer, tmp_path, DataError, file, *reasons)
