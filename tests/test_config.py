"""Configs: every preset of configs/clip.py and configs/classify.py loads and validates on 8
devices; overrides parse as their key's type in the task's schema; each rule fails naming the
key and the value (saved configs and resuming: tests/test_config_saved.py)."""

from __future__ import annotations

import math
import pathlib
from collections.abc import Sequence

import pytest

from jaxalign import config as config_lib
from jaxalign.schema import ExperimentConfig
from jaxalign.tasks.classify import ClassifyConfig
from jaxalign.tasks.clip import ClipConfig

ROOT = pathlib.Path(__file__).resolve().parents[1]
CLIP = str(ROOT / "configs" / "clip.py")
ADAPT = str(ROOT / "configs" / "adapt_digits.py")
CLASSIFY = str(ROOT / "configs" / "classify.py")
PRESETS = ("demo", "tiny", "siglip_demo", "vit_b32", "vit_b16", "vit_l14")
REAL = ("vit_b32", "vit_b16", "vit_l14")
CLASSIFY_PRESETS = ("digits", "shapes_scratch", "shapes_finetune", "shapes_probe", "tiny")


def _load(preset: str = "demo", overrides: Sequence[str] = ()) -> ExperimentConfig:
    return config_lib.load(f"{CLIP}:{preset}", overrides)


def _message(overrides: Sequence[str], preset: str = "demo", spec: str = CLIP) -> str:
    with pytest.raises(config_lib.ConfigError) as error:
        config_lib.load(f"{spec}:{preset}", overrides)
    return str(error.value)


def _fails(overrides: Sequence[str], *names: str, preset: str = "demo", spec: str = CLIP) -> str:
    """Loading with ``overrides`` raises a ConfigError naming every one of ``names``."""
    message = _message(overrides, preset, spec)
    for name in names:
        assert name in message, message
    return message


def _fails_validate(config: ExperimentConfig, *names: str, devices: int = 8, **kwargs) -> str:
    with pytest.raises(config_lib.ConfigError) as error:
        config_lib.validate(config, devices, **kwargs)
    for name in names:
        assert name in str(error.value), str(error.value)
    return str(error.value)


def _values(preset: str = "demo") -> dict:
    return config_lib.to_dict(_load(preset))


def _parse_fails(values: dict, *names: str) -> str:
    with pytest.raises(config_lib.ConfigError) as error:
        config_lib.parse(values)
    for name in names:
        assert name in str(error.value), str(error.value)
    return str(error.value)


# --- presets -----------------------------------------------------------------------------------


@pytest.mark.parametrize("preset", PRESETS)
def test_clip_preset_loads_typed_and_validates_on_eight_devices(preset: str):
    config = _load(preset)
    assert isinstance(config, ClipConfig) and config.task == "clip"
    config_lib.validate(config, 8, check_data=False)
    with pytest.raises(ValueError, match="frozen"):
        config.seed = 3  # a loaded config cannot change under the trainer's feet


@pytest.mark.parametrize("preset", CLASSIFY_PRESETS)
def test_classify_preset_loads_typed_and_validates_on_eight_devices(preset: str):
    config = config_lib.load(f"{CLASSIFY}:{preset}")
    assert isinstance(config, ClassifyConfig) and config.task == "classify"
    config_lib.validate(config, 8, check_data=False)
    transfer = preset in ("shapes_finetune", "shapes_probe")
    assert bool(config.init_from.workdir) == transfer
    assert (config.model.backbone_lr_mult == 0) == (preset == "shapes_probe")


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
        assert config.model.image == {}  # the preset's own patches


def test_presets_differ_as_documented():
    demo, siglip, tiny = _load("demo"), _load("siglip_demo"), _load("tiny")
    assert config_lib.to_dict(config_lib.load(CLIP)) == config_lib.to_dict(demo)  # no preset
    assert siglip.objective.loss == "siglip" and demo.objective.loss == "clip"
    assert siglip.model.logit_scale_init == pytest.approx(math.log(10))
    assert siglip.model.logit_bias_init == -5.0 and demo.model.logit_bias_init is None
    assert tiny.train.steps <= 10 and tiny.train.global_batch_size <= 32
    assert 0 < tiny.evals.max_examples <= 64
    assert demo.init_from.workdir == "" and demo.optim.ema_decay == 0.0
    # The demo: 300 steps with label smoothing; SigLIP's demo and the adaptation demos keep the
    # 500-step recipe without (configs/clip.py, docs/results/clip_demo.md).
    assert (demo.train.steps, demo.objective.label_smoothing) == (300, 0.05)
    assert demo.train.eval_every == demo.train.checkpoint_every == 150
    for other in (siglip, _load("demo_adapt_mmd")):
        assert (other.train.steps, other.objective.label_smoothing) == (500, 0.0)


def test_load_errors(tmp_path: pathlib.Path):
    with pytest.raises(FileNotFoundError, match=r"nope\.py"):
        config_lib.load(str(tmp_path / "nope.py:demo"))
    with pytest.raises(ValueError, match=r"'bogus'.*demo"):
        config_lib.load(f"{CLIP}:bogus")
    empty = tmp_path / "empty.py"
    empty.write_text("X = 1\n")
    with pytest.raises(config_lib.ConfigError, match="get_config"):
        config_lib.load(str(empty))


# --- overrides ---------------------------------------------------------------------------------


def test_overrides_of_each_type():
    config = _load(
        "siglip_demo",
        [
            "optim.lr=3e-4",  # float
            "--config.train.steps=7",  # int, absl-style
            "config.model.image.features=128",  # int, a free field typed by its default
            "data.name=digits_domains",  # str
            "evals.zeroshot_split='test'",  # quoted str
            "evals.templates=('a {}', 'the {}')",  # tuple
            "model.logit_bias_init=none",  # None where the schema allows it
            "objective.loss=clip",
            "model.text.causal=false",  # bool (free field)
            "init_from.workdir=runs/demo",
            "init_from.step=3",  # int | None
            "mesh.data=-1",
        ],
    )
    assert config.optim.lr == 3e-4 and isinstance(config.optim.lr, float)
    assert config.train.steps == 7 and isinstance(config.train.steps, int)
    assert config.model.image == {"features": 128}
    assert config.data.name == "digits_domains" and config.evals.zeroshot_split == "test"
    assert config.evals.templates == ("a {}", "the {}")
    assert config.model.logit_bias_init is None and config.init_from.step == 3
    assert config.model.text["causal"] is False
    config = _load(
        "tiny", ["model.image.pool=map", "objective.loss=siglip", "model.logit_bias_init=-5"]
    )
    assert config.model.image["pool"] == "map" and config.model.logit_bias_init == -5.0


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
        ("evals.templates=('a {}'", ["config.evals.templates", "\"('a {}'\"", "tuple"]),
        ("model.logit_bias_init=big", ["config.model.logit_bias_init", "'big'", "float"]),
        ("train.steps=none", ["config.train.steps", "'none'", "int"]),
        ("model=tiny", ["config.model", "group of keys"]),
        ("optim.lr.x=1", ["config.optim.lr", "a value"]),
        ("optim.lr", ["optim.lr", "KEY=VALUE"]),
    ],
)
def test_bad_override_names_key_and_value(override: str, names: list[str]):
    _fails([override], *names)


def test_a_key_given_twice_is_refused():
    # What an unquoted --config.data.shards=/data/s{0..3}.tar becomes in the shell.
    _fails(["optim.lr=1e-3", "--config.optim.lr=2e-3"], "config.optim.lr", "2 times")


def test_overriding_the_task_checks_the_new_tasks_schema():
    message = _fails(["task=classify"], "config.model.logit_scale_init", "unknown key")
    assert "config.model.backbone_lr_mult: missing" in message
    _fails(["task=vqgan"], "config.task='vqgan'", "'classify'", "'clip'", "'mae'")


# --- schema ------------------------------------------------------------------------------------


def test_unknown_and_missing_keys():
    values = _values()
    values["optim"]["momentum"] = 0.9
    _parse_fails(values, "config.optim.momentum=0.9", "unknown key", "'lr'")
    values = _values()
    values["extra"] = {"a": 1}
    _parse_fails(values, "config.extra", "unknown key")
    values = _values()
    del values["train"]["eval_every"]
    _parse_fails(values, "config.train.eval_every", "missing")
    values = _values()
    values["model"]["image"]["poool"] = "map"
    _parse_fails(values, "config.model.image.poool='map'", "'pool'")


@pytest.mark.parametrize(
    "key, value, names",
    [
        ("train.steps", "ten", ["config.train.steps='ten'", "integer"]),
        ("model.image.features", "2", ["config.model.image.features='2'", "expected int"]),
        ("evals.templates", ("a {}", 3), ["config.evals.templates[1]=3", "string"]),
        ("objective.tile", True, ["config.objective.tile=True", "integer"]),
        ("optim.clip_norm", 1, None),  # an int is a float
        ("optim.lr", float("inf"), ["config.optim.lr=inf", "finite"]),
    ],
)
def test_types_are_strict(key: str, value, names):
    values = _values()
    *groups, leaf = key.split(".")
    node = values
    for part in groups:
        node = node[part]
    node[leaf] = value
    if names is None:
        assert config_lib.parse(values).optim.clip_norm == 1.0
    else:
        _parse_fails(values, *names)


@pytest.mark.parametrize(
    "override, names",
    [
        ("model.preset=ViT-XL/99", ["config.model.preset='ViT-XL/99'", "'ViT-B/16'"]),
        ("model.dtype=float16", ["config.model.dtype='float16'", "'bfloat16'"]),
        ("model.remat=some", ["config.model.remat='some'", "'dots'"]),
        ("objective.loss=triplet", ["config.objective.loss='triplet'", "'siglip'"]),
        ("objective.impl=fast", ["config.objective.impl='fast'", "'ring'"]),
        ("data.source=s3", ["config.data.source='s3'", "'webdataset'"]),
    ],
)
def test_bad_choice(override: str, names: list[str]):
    _fails([override], *names)


@pytest.mark.parametrize(
    "override, names",
    [
        ("train.steps=0", ["config.train.steps=0", "greater than or equal to 1"]),
        ("train.global_batch_size=-8", ["config.train.global_batch_size=-8"]),
        ("objective.tile=0", ["config.objective.tile=0"]),
        ("optim.micro_batches=0", ["config.optim.micro_batches=0"]),
        ("optim.lr=0", ["config.optim.lr=0.0", "greater than 0"]),
        ("optim.lr=nan", ["config.optim.lr=nan"]),
        ("optim.ema_decay=1.0", ["config.optim.ema_decay=1.0", "less than 1"]),
        ("objective.label_smoothing=-0.1", ["config.objective.label_smoothing=-0.1"]),
        ("evals.max_examples=-1", ["config.evals.max_examples=-1"]),
        ("seed=-1", ["config.seed=-1"]),
        ("mesh.tensor=0", ["config.mesh.tensor=0", "-1"]),
        ("init_from.step=-2", ["config.init_from.step=-2"]),
    ],
)
def test_out_of_range(override: str, names: list[str]):
    _fails([override], *names)


def test_all_problems_in_one_message():
    message = _fails(
        ["train.steps=0", "optim.lr=-1", "model.dtype=half"],
        "3 config problems",
        "train.steps",
        "optim.lr",
        "model.dtype",
    )
    assert message.count("\n") == 3


# --- rules across keys ---------------------------------------------------------------------------


def test_batch_not_divisible_by_the_mesh():
    _fails_validate(
        _load("demo", ["train.global_batch_size=100"]),
        "config.train.global_batch_size=100",
        "data x fsdp = 8",
    )
    config_lib.validate(_load("demo", ["train.global_batch_size=200"]), 8)
    _fails_validate(
        _load("demo", ["optim.micro_batches=3", "train.global_batch_size=200"]),
        "config.train.global_batch_size=200",
        "optim.micro_batches (3)",
    )
    _fails_validate(_load("demo", ["evals.batch_size=12"]), "config.evals.batch_size=12")
    # tensor parallelism does not split the batch: 4 shards of 2 devices each.
    config_lib.validate(_load("demo", ["mesh.tensor=2", "train.global_batch_size=4"]), 8)


def test_mesh_not_resolving():
    _fails_validate(_load("demo", ["mesh.data=3"]), "config.mesh", "'data': 3", "8 devices")
    _fails_validate(_load("demo", ["mesh.fsdp=3"]), "config.mesh.data=-1", "8 devices")
    _fails_validate(_load("demo", ["mesh.fsdp=-1"]), "config.mesh", "-1")


def test_clip_rules():
    _fails(["evals.templates=('a {}', 'a shape')"], "config.evals.templates", "'a shape'", "{}")
    _fails(["evals.templates=()"], "config.evals.templates=()")
    _fails(["objective.loss=siglip"], "config.model.logit_bias_init=None", "siglip")
    _fails(["model.logit_bias_init=-10"], "config.model.logit_bias_init=-10.0")
    _fails(
        ["objective.label_smoothing=0.1"],
        "config.objective.label_smoothing=0.1",
        preset="siglip_demo",
    )


def test_image_size_must_fit_the_image_tower():
    _fails(["data.image_size=36"], "config.data.image_size=36", "patch size 8", preset="tiny")
    _fails(["data.image_size=200"], "config.data.image_size=200", "patch size 32", preset="vit_b32")
    _load("tiny", ["data.image_size=36", "model.image.patch_size=6"])
    # The demo's ConvNet halves the image three times (its default channels), or as many
    # times as it is given channels.
    _fails(["data.image_size=60"], "config.data.image_size=60", "total stride 8")
    _load("demo", ["data.image_size=60", "model.image.channels=(8, 16)"])
    _fails(["data.image_size=20"], "total stride 8", spec=CLASSIFY, preset="digits")


def test_image_fields_must_belong_to_the_tower():
    _fails(["model.image.patch_size=8"], "config.model.image.patch_size=8", "ConvNet")
    _fails(["model.image.channels=(8,)"], "config.model.image.channels", "ViT", preset="tiny")


def test_classify_rules():
    _fails(
        ["optim.micro_batches=2"], "config.optim.micro_batches=2", spec=CLASSIFY, preset="digits"
    )
    _fails(
        ["model.backbone_lr_mult=-1"],
        "config.model.backbone_lr_mult=-1.0",
        spec=CLASSIFY,
        preset="digits",
    )
    _fails(
        ["data.source=webdataset"],
        "config.data.source='webdataset'",
        spec=CLASSIFY,
        preset="digits",
    )


def test_init_from_rules(tmp_path: pathlib.Path):
    _fails(["init_from.params=('image_tower->backbone',)"], "config.init_from.workdir=''")
    _fails(
        [f"init_from.workdir={tmp_path}", "init_from.params=('a->b->c',)"],
        "config.init_from.params",
        "'a->b->c'",
    )
    _fails(
        [f"init_from.workdir={tmp_path}", "init_from.params=('a->backbone', 'b->backbone/fc')"],
        "config.init_from.params",
        "'backbone' and 'backbone/fc' map onto the same parameters",
    )
    config = config_lib.load(f"{CLASSIFY}:shapes_probe", [f"init_from.workdir={tmp_path}"])
    assert config.init_from.mapping() == [("image_tower", "backbone")]
    one = config_lib.override(config, ["init_from.params=image_tower->backbone"])
    assert one.init_from.params == ("image_tower->backbone",)  # one string: a tuple of one


def test_unknown_builtin_name():
    _fails(["data.name=imagenet"], "config.data.name='imagenet'", "'shapes_captions'")


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
    _fails(overrides[:3], "config.data.tokenizer=''")


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
    _fails(
        [*overrides[:4], "evals.retrieval_split=validation"],
        "config.evals.retrieval_split='validation'",
        "webdataset",
    )


def test_missing_tokenizer():
    config = _load("vit_b32", ["data.shards=" + CLIP])
    with pytest.raises(config_lib.MissingDataError, match=r"config\.data\.tokenizer='/data/"):
        config_lib.validate(config, 8)
