"""Configs: every preset of configs/clip.py loads and validates on 8 devices; overrides parse as
their field's type; each validation rule fails naming the key and the value; save round-trips."""

from __future__ import annotations

import json
import math
import pathlib
from collections.abc import Sequence

import ml_collections
import pytest

from jaxalign import config as config_lib

ROOT = pathlib.Path(__file__).resolve().parents[1]
CLIP = str(ROOT / "configs" / "clip.py")
PRESETS = ("demo", "tiny", "siglip_demo", "vit_b32", "vit_b16", "vit_l14")
REAL = ("vit_b32", "vit_b16", "vit_l14")


def _load(preset: str = "demo", overrides: Sequence[str] = ()) -> ml_collections.ConfigDict:
    return config_lib.load(f"{CLIP}:{preset}", overrides)


def _fails(config: ml_collections.ConfigDict, *names: str, devices: int = 8, **kwargs) -> str:
    """Validates, expecting a ConfigError whose message contains every one of ``names``."""
    with pytest.raises(config_lib.ConfigError) as error:
        config_lib.validate(config, devices, **kwargs)
    message = str(error.value)
    for name in names:
        assert name in message, message
    return message


# --- presets -----------------------------------------------------------------------------------


@pytest.mark.parametrize("preset", PRESETS)
def test_preset_loads_and_validates_on_eight_devices(preset: str):
    config = _load(preset)
    assert config.task == "clip"
    config_lib.validate(config, 8, check_data=preset not in REAL)
    assert config.is_locked


def _leaves(tree: dict, groups: Sequence[str], prefix: str = "") -> set[str]:
    """Dotted keys of a nested dict; the ``groups`` (free-field groups) count as leaves."""
    keys = set()
    for key, value in tree.items():
        if isinstance(value, dict) and prefix + key not in groups:
            keys |= _leaves(value, groups, f"{prefix}{key}.")
        else:
            keys.add(prefix + key)
    return keys


@pytest.mark.parametrize("preset", PRESETS)
def test_every_preset_has_exactly_the_schema_keys(preset: str):
    groups = ("model.image", "model.text")
    schema = _leaves(config_lib.SCHEMAS["clip"], groups)
    assert _leaves(config_lib.to_dict(_load(preset)), groups) == schema
    assert len(schema) == 47


def test_real_presets_with_their_data_present(tmp_path: pathlib.Path):
    shards = tmp_path / "shards"
    shards.mkdir()
    for i in range(3):
        (shards / f"{i:05d}.tar").write_bytes(b"")
    (tmp_path / "tok").mkdir()
    overrides = [f"data.shards={shards}/{{00000..00002}}.tar", f"data.tokenizer={tmp_path}/tok"]
    for preset in REAL:
        config = _load(preset, overrides)
        config_lib.validate(config, 8)
        assert config.model.dtype == "bfloat16" and config.mesh.fsdp == -1
        assert config.objective.impl in ("tiled", "ring") and config.model.remat != "none"


def test_presets_differ_as_documented():
    demo, siglip, tiny = _load("demo"), _load("siglip_demo"), _load("tiny")
    assert config_lib.to_dict(config_lib.load(CLIP)) == config_lib.to_dict(demo)  # no preset
    assert siglip.objective.loss == "siglip" and demo.objective.loss == "clip"
    assert siglip.model.logit_scale_init == pytest.approx(math.log(10))
    assert siglip.model.logit_bias_init == -10.0 and demo.model.logit_bias_init is None
    assert tiny.train.steps <= 10 and tiny.train.global_batch_size <= 32
    assert 0 < tiny.evals.max_examples <= 64


def test_load_errors(tmp_path: pathlib.Path):
    with pytest.raises(FileNotFoundError, match=r"nope\.py"):
        config_lib.load(str(tmp_path / "nope.py:demo"))
    with pytest.raises(ValueError, match=r"'bogus'.*demo"):
        config_lib.load(f"{CLIP}:bogus")
    empty = tmp_path / "empty.py"
    empty.write_text("X = 1\n")
    with pytest.raises(config_lib.ConfigError, match="get_config"):
        config_lib.load(str(empty))


def test_loaded_config_is_locked():
    config = _load()
    with pytest.raises(AttributeError):
        config.optim.learning_rate = 1.0


# --- overrides ---------------------------------------------------------------------------------


def test_overrides_of_each_type():
    config = _load(
        "siglip_demo",
        [
            "optim.lr=3e-4",  # float
            "--config.train.steps=7",  # int, absl-style
            "config.model.image.ln_pre=1",  # bool (a free field, typed by its default)
            "data.name=digits_domains",  # str
            "evals.zeroshot_split='test'",  # quoted str
            "evals.templates=('a {}', 'the {}')",  # tuple
            "model.logit_bias_init=none",  # None-able placeholder
            "model.image.pool=map",  # new free field, typed by the ViT default
            "model.image.depth=2",
            "model.text.causal=false",
            "mesh.data=-1",
        ],
    )
    assert config.optim.lr == 3e-4 and isinstance(config.optim.lr, float)
    assert config.train.steps == 7 and isinstance(config.train.steps, int)
    assert config.model.image.ln_pre is True
    assert config.data.name == "digits_domains" and config.evals.zeroshot_split == "test"
    assert config.evals.templates == ("a {}", "the {}")
    assert config.model.logit_bias_init is None
    assert config.model.image.pool == "map" and config.model.image.depth == 2
    assert config.model.text.causal is False
    config = _load("demo", ["model.logit_bias_init=-5", "optim.warmup_steps=0"])
    assert config.model.logit_bias_init == -5.0


@pytest.mark.parametrize(
    "override, names",
    [
        ("optim.learning_rate=1", ["config.optim.learning_rate", "'lr'", "'warmup_steps'"]),
        ("modle.preset=tiny", ["config.modle", "'model'", "'optim'"]),
        ("model.image.pol=map", ["config.model.image.pol", "'pool'"]),
        ("model.text.max_len=8", ["config.model.text.max_len", "config.data.max_len"]),
        ("optim.lr=fast", ["config.optim.lr", "'fast'", "float"]),
        ("train.steps=2.5", ["config.train.steps", "'2.5'", "int"]),
        ("model.text.causal=maybe", ["config.model.text.causal", "'maybe'", "bool"]),
        ("evals.templates=a {}", ["config.evals.templates", "'a {}'", "tuple"]),
        ("model.logit_bias_init=big", ["config.model.logit_bias_init", "'big'", "float"]),
        ("model=tiny", ["config.model", "group of keys"]),
        ("optim.lr", ["optim.lr", "KEY=VALUE"]),
    ],
)
def test_bad_override_names_key_and_value(override: str, names: list[str]):
    with pytest.raises(config_lib.ConfigError) as error:
        _load("demo", [override])
    for name in names:
        assert name in str(error.value), str(error.value)


# --- validation rules --------------------------------------------------------------------------


def _unlocked(preset: str = "demo", overrides: Sequence[str] = ()) -> ml_collections.ConfigDict:
    config = _load(preset, overrides)
    config.unlock()
    return config


def test_unknown_key():
    config = _unlocked()
    config.optim.momentum = 0.9
    _fails(config, "config.optim.momentum", "0.9", "unknown key", "'lr'")
    config = _unlocked()
    config.extra = ml_collections.ConfigDict({"a": 1})
    _fails(config, "config.extra", "unknown key")


def test_missing_key():
    config = _unlocked()
    del config.train["eval_every"]
    _fails(config, "config.train.eval_every", "missing")


def test_unknown_model_override_field():
    config = _unlocked()
    config.model.image.poool = "map"
    _fails(config, "config.model.image.poool", "'map'", "'pool'")


@pytest.mark.parametrize(
    "key, value, names",
    [
        ("train.steps", "ten", ["config.train.steps='ten'", "expected int"]),
        ("model.image.depth", "2", ["config.model.image.depth='2'", "expected int"]),
        ("evals.templates", ("a {}", 3), ["config.evals.templates", "tuple of str"]),
        ("objective.tile", True, ["config.objective.tile=True", "expected int"]),
    ],
)
def test_wrong_type(key: str, value, names: list[str]):
    # Built by hand: ConfigDict itself refuses most wrong types on assignment.
    tree = config_lib.to_dict(_load())
    group, leaf = key.rsplit(".", 1)
    node = tree
    for part in group.split("."):
        node = node[part]
    node[leaf] = value
    _fails(ml_collections.ConfigDict(tree), *names)


@pytest.mark.parametrize(
    "override, names",
    [
        ("model.preset=ViT-XL/99", ["config.model.preset='ViT-XL/99'", "'ViT-B/16'"]),
        ("model.dtype=float16", ["config.model.dtype='float16'", "'bfloat16'"]),
        ("model.remat=some", ["config.model.remat='some'", "'dots'"]),
        ("objective.loss=triplet", ["config.objective.loss='triplet'", "'siglip'"]),
        ("objective.impl=fast", ["config.objective.impl='fast'", "'ring'"]),
        ("data.source=s3", ["config.data.source='s3'", "'webdataset'"]),
        ("task=mae", ["config.task='mae'", "'clip'"]),
    ],
)
def test_bad_choice(override: str, names: list[str]):
    _fails(_load("demo", [override]), *names)


@pytest.mark.parametrize(
    "override, names",
    [
        ("train.steps=0", ["config.train.steps=0", "[1, inf)"]),
        ("train.global_batch_size=-8", ["config.train.global_batch_size=-8"]),
        ("objective.tile=0", ["config.objective.tile=0"]),
        ("optim.micro_batches=0", ["config.optim.micro_batches=0"]),
        ("optim.lr=0", ["config.optim.lr=0.0", "(0, inf)"]),
        ("optim.lr=nan", ["config.optim.lr=nan", "finite"]),
        ("objective.label_smoothing=1.0", ["config.objective.label_smoothing=1.0", "[0, 1)"]),
        ("objective.label_smoothing=-0.1", ["config.objective.label_smoothing=-0.1"]),
        ("evals.max_examples=-1", ["config.evals.max_examples=-1"]),
        ("seed=-1", ["config.seed=-1"]),
    ],
)
def test_out_of_range(override: str, names: list[str]):
    _fails(_load("demo", [override]), *names)


def test_batch_not_divisible_by_the_mesh():
    config = _load("demo", ["train.global_batch_size=100"])
    _fails(config, "config.train.global_batch_size=100", "data x fsdp = 8")
    config = _load("demo", ["optim.micro_batches=3", "train.global_batch_size=200"])
    config_lib.validate(_load("demo", ["train.global_batch_size=200"]), 8)
    _fails(config, "config.train.global_batch_size=200", "optim.micro_batches (3)")
    _fails(_load("demo", ["evals.batch_size=12"]), "config.evals.batch_size=12")
    # tensor parallelism does not split the batch: 4 shards of 2 devices each.
    config_lib.validate(_load("demo", ["mesh.tensor=2", "train.global_batch_size=4"]), 8)


def test_mesh_not_resolving():
    _fails(_load("demo", ["mesh.data=3"]), "config.mesh", "'data': 3", "8 devices")
    _fails(_load("demo", ["mesh.fsdp=3"]), "config.mesh.data=-1", "8 devices")
    _fails(_load("demo", ["mesh.fsdp=-1"]), "config.mesh", "-1")
    _fails(_load("demo", ["mesh.tensor=0"]), "config.mesh.tensor", "0")


def test_template_without_placeholder():
    config = _load("demo", ["evals.templates=('a {}', 'a shape')"])
    _fails(config, "config.evals.templates", "'a shape'", "{}")
    _fails(_load("demo", ["evals.templates=()"]), "config.evals.templates=()")


def test_loss_and_bias_must_agree():
    config = _load("demo", ["objective.loss=siglip"])
    _fails(config, "config.model.logit_bias_init=None", "siglip")
    _fails(_load("demo", ["model.logit_bias_init=-10"]), "config.model.logit_bias_init=-10.0")
    config = _load("siglip_demo", ["objective.label_smoothing=0.1"])
    _fails(config, "config.objective.label_smoothing=0.1")


def test_image_size_must_fit_the_image_tower():
    _fails(_load("tiny", ["data.image_size=36"]), "config.data.image_size=36", "patch size 8")
    config = _load("vit_b32", ["data.image_size=200"])  # the preset's own patches
    _fails(config, "config.data.image_size=200", "patch size 32", check_data=False)
    config_lib.validate(_load("tiny", ["data.image_size=36", "model.image.patch_size=6"]), 8)
    # The demo's ConvNet halves the image three times (its default channels), or as many
    # times as it is given channels.
    _fails(_load("demo", ["data.image_size=60"]), "config.data.image_size=60", "total stride 8")
    config_lib.validate(_load("demo", ["data.image_size=60", "model.image.channels=(8, 16)"]), 8)


def test_image_fields_must_belong_to_the_tower():
    _fails(
        _load("demo", ["model.image.patch_size=8"]), "config.model.image.patch_size=8", "ConvNet"
    )
    _fails(_load("tiny", ["model.image.channels=(8,)"]), "config.model.image.channels", "ViT")


def test_unknown_builtin_name():
    config = _load("demo", ["data.name=imagenet"])
    _fails(config, "config.data.name='imagenet'", "'shapes_captions'", check_data=False)


def test_missing_tfds_data_dir(tmp_path: pathlib.Path):
    (tmp_path / "tok").mkdir()
    overrides = [
        "data.source=tfds",
        "data.name=my_pairs:1.0.0",
        f"data.data_dir={tmp_path}/tfds",
        f"data.tokenizer={tmp_path}/tok",
    ]
    config = _load("demo", overrides)
    with pytest.raises(FileNotFoundError) as error:
        config_lib.validate(config, 8)
    assert isinstance(error.value, ValueError)
    assert "config.data.name='my_pairs:1.0.0'" in str(error.value)
    assert str(tmp_path / "tfds" / "my_pairs") in str(error.value)
    (tmp_path / "tfds" / "my_pairs").mkdir(parents=True)
    config_lib.validate(config, 8)
    config_lib.validate(
        _load("demo", [*overrides[:3], "data.tokenizer=/no/tok"]), 8, check_data=False
    )
    _fails(_load("demo", overrides[:3]), "config.data.tokenizer=''", check_data=False)


def test_webdataset_glob_matching_nothing(tmp_path: pathlib.Path):
    (tmp_path / "tok").mkdir()
    overrides = [
        "data.source=webdataset",
        f"data.shards={tmp_path}/shard-*.tar",
        f"data.tokenizer={tmp_path}/tok",
        "evals.zeroshot_split=''",
        "evals.retrieval_split=''",
    ]
    config = _load("demo", overrides)
    with pytest.raises(config_lib.MissingDataError, match=r"data\.shards=.*shard-\*\.tar"):
        config_lib.validate(config, 8)
    (tmp_path / "shard-0.tar").write_bytes(b"")
    config_lib.validate(config, 8)
    config = _load("demo", [*overrides[:1], f"data.shards={tmp_path}/{{0..1}}.tar", *overrides[2:]])
    with pytest.raises(config_lib.MissingDataError, match=r"2 of its 2 shards are missing"):
        config_lib.validate(config, 8)
    config = _load("demo", [*overrides, "evals.retrieval_split=validation"])
    _fails(config, "config.evals.retrieval_split='validation'", "webdataset")


def test_missing_tokenizer():
    config = _load("vit_b32", ["data.shards=" + CLIP])
    with pytest.raises(config_lib.MissingDataError, match=r"config\.data\.tokenizer='/data/"):
        config_lib.validate(config, 8)


def test_all_problems_of_a_stage_in_one_message():
    config = _load("demo", ["train.steps=0", "optim.lr=-1", "model.dtype=half"])
    message = _fails(config, "3 config problems", "train.steps", "optim.lr", "model.dtype")
    assert message.count("\n") == 3


# --- save ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("preset", ["tiny", "siglip_demo"])
def test_save_writes_json_that_round_trips(preset: str, tmp_path: pathlib.Path):
    config = _load(preset, ["evals.templates=('a {}', 'the {}')"])
    path = config_lib.save(config, tmp_path / "run")
    assert path == str(tmp_path / "run" / "config.json")
    saved = json.loads(pathlib.Path(path).read_text())
    assert saved == config_lib.to_dict(config)
    assert saved["evals"]["templates"] == ["a {}", "the {}"]
    assert saved["model"]["logit_bias_init"] == config.model.logit_bias_init
    assert saved["optim"]["lr"] == config.optim.lr and saved["mesh"] == dict(config.mesh)
    # Back to a ConfigDict: the same values, tuples from the JSON lists.
    restored = ml_collections.ConfigDict(saved)
    restored.evals.templates = tuple(restored.evals.templates)
    config_lib.validate(restored, 8)
    assert config_lib.to_dict(restored) == saved
    assert config_lib.save(config, tmp_path / "c.json") == str(tmp_path / "c.json")
    demo = config_lib.to_dict(_load("demo"))
    assert demo["model"]["logit_bias_init"] is None


def test_real_presets_keep_their_patch_size():
    for preset in REAL:
        assert dict(_load(preset).model.image) == {}


@pytest.mark.parametrize("preset", PRESETS)
def test_saved_config_loads_back_equal_and_valid(preset: str, tmp_path: pathlib.Path):
    overrides = ["model.image.channels=(8, 16)"] if preset in ("demo", "siglip_demo") else []
    config = _load(preset, overrides)
    back = config_lib.load_json(config_lib.save(config, tmp_path))
    assert back.to_dict() == config.to_dict()
    assert isinstance(back.evals.templates, tuple)
    config_lib.validate(back, 8, check_data=False)
