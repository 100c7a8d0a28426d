"""Saved configs: ``config.json`` round-trips, typed; a malformed, unreadable or missing one
names its file; resuming names both values of each difference; a run saved before newer keys
still loads."""

from __future__ import annotations

import json
import pathlib
import re

import pytest

from jaxalign import config as config_lib
from tests.test_config import ADAPT, CLIP, PRESETS, _load, _values


@pytest.mark.parametrize("preset", PRESETS)
def test_saved_config_loads_back_equal_and_typed(preset: str, tmp_path: pathlib.Path):
    overrides = ["model.image.channels=(8, 16)"] if preset in ("demo", "siglip_demo") else []
    config = _load(preset, [*overrides, "evals.templates=('a {}', 'the {}')"])
    path = config_lib.save(config, tmp_path / "run")
    assert path == str(tmp_path / "run" / "config.json")
    saved = json.loads(pathlib.Path(path).read_text())
    assert saved["evals"]["templates"] == ["a {}", "the {}"]
    back = config_lib.load_json(path)
    assert back == config  # tuples back from JSON lists, None back, the same typed model
    assert isinstance(back.evals.templates, tuple)
    if overrides:
        assert back.model.image == {"channels": (8, 16)}
    assert config_lib.save(config, tmp_path / "c.json") == str(tmp_path / "c.json")


def test_load_json_names_the_file(tmp_path: pathlib.Path):
    path = tmp_path / "config.json"
    values = _values()
    values["optim"]["lr"] = "fast"
    path.write_text(json.dumps(values))
    with pytest.raises(config_lib.ConfigError, match=r"config\.json.*config\.optim\.lr='fast'"):
        config_lib.load_json(path)


def _truncated_config(tmp_path: pathlib.Path) -> bytes:
    text = pathlib.Path(config_lib.save(_load("tiny"), tmp_path / "saved")).read_bytes()
    return text[: len(text) // 2]


@pytest.mark.parametrize(
    "contents, reason",
    [
        (b'{"task": "clip", "seed": ', "not valid JSON"),
        (None, "not valid JSON"),  # a saved config cut in half
        (b"", "not valid JSON"),
        (b"\xff\xfe{}", "not valid JSON"),
        (b"[1, 2]", "expected a JSON object"),
        (b"null", "expected a JSON object"),
        (b'{"task": 3}', "config.task=3: unknown task"),
    ],
)
def test_malformed_run_config_json_names_the_file(contents, reason, tmp_path: pathlib.Path):
    path = tmp_path / "run" / "config.json"
    path.parent.mkdir()
    path.write_bytes(_truncated_config(tmp_path) if contents is None else contents)
    with pytest.raises(config_lib.ConfigError) as error:
        config_lib.load_json(path)
    message = str(error.value)
    assert message.startswith(f"{path}: ") and reason in message, message


def test_unreadable_or_missing_run_config_json_names_the_file(tmp_path: pathlib.Path):
    directory = tmp_path / "config.json"
    directory.mkdir()
    with pytest.raises(config_lib.ConfigError, match=re.escape(f"{directory}: cannot be read")):
        config_lib.load_json(directory)
    missing = tmp_path / "absent" / "config.json"
    with pytest.raises(config_lib.MissingDataError, match=re.escape(f"{missing} does not exist")):
        config_lib.load_json(missing)


def test_override_of_a_typed_config():
    config = config_lib.override(_load("tiny"), ["train.steps=9", "model.image.depth=2"])
    assert config.train.steps == 9 and config.model.image["depth"] == 2
    assert _load("tiny").train.steps != 9  # the original is untouched


def test_resume_problems_name_both_values():
    saved = _load("tiny")
    safe = config_lib.override(
        saved, ["train.steps=50", "train.eval_every=7", "mesh.data=2", "mesh.fsdp=-1"]
    )
    assert config_lib.resume_problems(saved, safe) == []
    assert {k for k, _, _ in config_lib.differences(saved, safe)} == {
        "train.steps",
        "train.eval_every",
        "mesh.data",
        "mesh.fsdp",
    }
    changed = config_lib.override(
        saved, ["model.image.depth=2", "train.global_batch_size=32", "train.steps=50"]
    )
    problems = config_lib.resume_problems(config_lib.to_dict(saved), changed)
    assert problems == [
        "config.model.image.depth: the run was started with 1, this command has 2",
        "config.train.global_batch_size: the run was started with 16, this command has 32",
    ]
    # A key the saved config lacks (an older version of the schema) is a difference too.
    old = config_lib.to_dict(saved)
    del old["optim"]["ema_decay"]
    assert config_lib.resume_problems(old, saved) == [
        "config.optim.ema_decay: the run was started with '<absent>', this command has 0.0"
    ]


@pytest.mark.parametrize(
    "spec, overrides",
    [
        (f"{CLIP}:tiny", []),
        (f"{CLIP}:tiny_adapt", ["adapt.target_batch_size=0"]),  # 0: what older runs did
        (f"{ADAPT}:tiny", ["data.example_cache_mb=0"]),
    ],
)
def test_a_run_saved_before_newer_keys_still_loads(spec, overrides, tmp_path):
    config = config_lib.load(spec, overrides)
    values = config_lib.to_dict(config)
    for key in config_lib.ADDED_KEYS:
        group, name = key.split(".")
        values.get(group, {}).pop(name, None)  # a key of another task's group: absent anyway
    (tmp_path / "config.json").write_text(json.dumps(values))
    assert config_lib.load_json(tmp_path / "config.json") == config
