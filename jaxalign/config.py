"""Configs: load ``"file.py:preset"``, apply ``KEY=VALUE`` overrides, check, save, compare.

A config file defines ``get_config(arg) -> ml_collections.ConfigDict`` (``configs/clip.py``). Its
values, overridden, are validated into the typed config of the task they name (``config.task``;
the schema and rules live in the task's file, ``jaxalign.tasks``)::

    config = load("configs/clip.py:demo", ["optim.lr=1e-3", "--config.train.steps=100"])
    validate(config, num_devices=jax.device_count())  # the mesh and the data, before compiling
    save(config, workdir)  # workdir/config.json; load_json reads it back, typed
    resume_problems(load_json(path), config)  # keys that may not change when a run resumes

Every error is a ``ConfigError`` (a ValueError) whose lines each name the dotted key and the
value: an unknown key (with the keys there), a missing one, a wrong type, a value out of range,
a rule across keys, a mesh that does not fit the devices, data that is not on disk
(``MissingDataError``, also a FileNotFoundError).
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import re
import sys
import types
from collections.abc import Mapping, Sequence
from typing import Any

import ml_collections
import pydantic

from jaxalign import overrides as overrides_lib
from jaxalign.errors import DataError, read_json_object
from jaxalign.parallel.mesh import resolve_mesh_shape
from jaxalign.schema import ConfigError, ExperimentConfig, MissingDataError
from jaxalign.tasks import TASKS

__all__ = [
    "SAFE_ON_RESUME",
    "ConfigError",
    "MissingDataError",
    "apply_overrides",
    "differences",
    "import_config_file",
    "init_from_off",
    "load",
    "load_json",
    "override",
    "parse",
    "resume_problems",
    "save",
    "schema_of",
    "to_dict",
    "validate",
]

# Keys a resumed run may change: when it stops, how often it logs, evaluates and checkpoints,
# how it prefetches and caches examples, what it evaluates (evals read the state, never change
# it), and the mesh (checkpoints restore into any mesh; the losses then agree to rounding, not
# bit for bit). A new ``train.steps`` rebuilds the learning-rate schedule for the new end: past
# the old end of a decayed schedule the rate rises again to the new cosine's value. After a
# divergence, a lower ``optim.lr`` scales the whole schedule from the restored step on (the
# optimizer state does not hold the rate). The limits that stop a run (non-finite updates,
# skipped examples, failed saves) may change too. Every change is logged and appended to the run's
# ``config_changes.jsonl`` with the step it took effect at.
SAFE_ON_RESUME: tuple[str, ...] = (
    "train.steps",
    "train.log_every",
    "train.eval_every",
    "train.checkpoint_every",
    "train.keep_checkpoints",
    "train.max_failed_saves",
    "optim.lr",
    "optim.max_nonfinite_in_a_row",
    "data.prefetch",
    "data.example_cache_mb",
    "data.max_skipped_in_a_row",
    "evals.",
    "mesh.",
)


def schema_of(task: Any) -> type[ExperimentConfig]:
    """The typed config of the task named ``task``; ConfigError when none is registered."""
    if not isinstance(task, str) or task not in TASKS:
        raise ConfigError(
            f"config.task={task!r}: unknown task; choose from {sorted(TASKS)} (a task defined in "
            "a config file is known once that file is loaded: `jaxalign eval --config=FILE.py`)"
        )
    return TASKS[task].Config


def init_from_off() -> ml_collections.ConfigDict:
    """A config file's ``init_from`` group switched off: the run starts from ``seed``'s
    initialisation (``jaxalign.schema.InitFromConfig``)."""
    init_from = ml_collections.ConfigDict()
    init_from.workdir = ""
    init_from.step = ml_collections.config_dict.placeholder(int)  # None: the newest checkpoint
    init_from.params = ()
    return init_from


def optim_group(**values: Any) -> ml_collections.ConfigDict:
    """A config file's ``optim`` group: AdamW's usual constants (``b1`` 0.9, ``b2`` 0.999,
    ``eps`` 1e-8), clipping at norm 1, no accumulation, no moving average, stopping after 10
    non-finite updates in a row; ``values`` (at least ``lr``, ``warmup_steps``,
    ``min_lr_ratio``, ``weight_decay``) set or replace keys (``jaxalign.schema.OptimConfig``)."""
    group = dict(
        name="adamw",
        b1=0.9,
        b2=0.999,
        eps=1e-8,
        clip_norm=1.0,
        micro_batches=1,
        max_nonfinite_in_a_row=10,
        ema_decay=0.0,
    )
    return ml_collections.ConfigDict({**group, **values})


def train_group(**values: Any) -> ml_collections.ConfigDict:
    """A config file's ``train`` group: two checkpoints kept, 3 failed saves in a row stop the
    run; ``values`` (at least ``global_batch_size``, ``steps``, ``log_every``,
    ``checkpoint_every``, ``eval_every``) set or replace keys (``jaxalign.schema.TrainConfig``);
    wall-clock figures are logged in ``metrics.jsonl`` too (``timing_in_metrics``)."""
    group = {"keep_checkpoints": 2, "max_failed_saves": 3, "timing_in_metrics": True}
    return ml_collections.ConfigDict({**group, **values})


# Named meshes: how the devices split into the data, fsdp and tensor axes. The logical axis
# rules (jaxalign/parallel/sharding.py) put each weight's ``embed`` axis over fsdp and its wide
# axis (``mlp``, ``heads``, ``vocab``) over tensor; the batch is split over data and fsdp.
MESH_PRESETS: dict[str, dict[str, int]] = {
    # replicas: every device holds the whole model and optimizer state (small models)
    "data": {"data": -1, "fsdp": 1, "tensor": 1},
    # ZeRO-3: every weight and its optimizer moments split over all devices, gathered per layer
    "fsdp": {"data": 1, "fsdp": -1, "tensor": 1},
    # fsdp within a host of 8 devices, replicas across hosts (gathers stay on the host's links)
    "hybrid8": {"data": -1, "fsdp": 8, "tensor": 1},
    # fsdp, and each wide weight split 4 ways (tensor parallelism within a host)
    "fsdp_tensor4": {"data": 1, "fsdp": -1, "tensor": 4},
}


def mesh_group(preset: str = "data", **values: Any) -> ml_collections.ConfigDict:
    """A config file's ``mesh`` group: ``MESH_PRESETS[preset]`` with ``values`` on top
    (``jaxalign.schema.MeshConfig``).

    Raises:
      ValueError: an unknown preset, listing the choices.
    """
    if preset not in MESH_PRESETS:
        raise ValueError(f"unknown mesh preset {preset!r}; choose from {sorted(MESH_PRESETS)}")
    return ml_collections.ConfigDict({**MESH_PRESETS[preset], **values})


# --- load and override -------------------------------------------------------------------------


def load(spec: str, overrides: Sequence[str] = ()) -> ExperimentConfig:
    """``"path/to/file.py[:arg]"`` -> that file's ``get_config(arg)``, overridden, validated
    into its task's typed config (every key, type, range and rule that needs no devices).

    Raises:
      FileNotFoundError: the file does not exist (the message names the path).
      ConfigError: a malformed spec, a file without ``get_config``, an unknown preset (the
        config file's own message, naming the choices), a bad override or value.
    """
    module, arg = import_config_file(spec)
    path = module.__file__
    get_config = getattr(module, "get_config", None)
    if not callable(get_config):
        raise ConfigError(f"config file {path!r} defines no get_config(arg) function")
    try:
        config = get_config() if arg is None else get_config(arg)
    except ValueError as error:  # the file's own check of its argument (an unknown preset)
        raise ConfigError(f"--config={spec}: {error}") from None
    if not isinstance(config, ml_collections.ConfigDict):
        raise ConfigError(f"{path}: get_config returned {type(config).__name__}, not a ConfigDict")
    return parse(apply_overrides(config.to_dict(), overrides))


def import_config_file(spec: str) -> tuple[types.ModuleType, str | None]:
    """Runs the config file of ``"path/to/file.py[:arg]"`` (registering any task it defines);
    returns the module and ``arg`` (None when the spec has none)."""
    match = re.fullmatch(r"(?P<path>.+?\.py)(?::(?P<arg>.*))?", spec)
    if not match:
        raise ConfigError(f"config spec {spec!r}: expected 'path/to/file.py' or 'file.py:preset'")
    path = os.path.expanduser(match["path"])
    if not os.path.isfile(path):
        raise MissingDataError(f"config file {path!r} (from spec {spec!r}) does not exist")
    name = "_jaxalign_config_" + re.sub(r"\W", "_", os.path.splitext(os.path.basename(path))[0])
    module_spec = importlib.util.spec_from_file_location(name, path)
    assert module_spec is not None and module_spec.loader is not None
    module = importlib.util.module_from_spec(module_spec)
    sys.modules[name] = module  # dataclasses (flax modules) defined in the file look it up
    module_spec.loader.exec_module(module)  # may register a task the file defines
    return module, match["arg"]


def override(config: ExperimentConfig, overrides: Sequence[str]) -> ExperimentConfig:
    """A copy of a typed ``config`` with ``overrides`` applied, validated again."""
    return parse(apply_overrides(to_dict(config), overrides))


def apply_overrides(values: dict[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """Sets each ``"KEY=VALUE"`` (also ``"--config.KEY=VALUE"``) in the plain dict ``values``,
    in place, and returns it.

    ``VALUE`` is parsed as the key's type in the schema of the task the values name (after any
    ``task=`` override): ``int``, ``float``, ``bool`` (true / false / 1 / 0 / yes / no), ``str``
    (as given; quotes optional), ``tuple`` (a Python literal, ``"('a {}', 'the {}')"``, or one
    string for a tuple of one);
    ``none`` / ``null`` where the key may be ``None``. Keys of a free group (``model.image``)
    take the type of the module field's default.

    Raises:
      ConfigError: an unknown key (naming the dotted key and the keys at that level), a key
        given twice, or a value that does not parse as the key's type (naming key, value and
        type).
    """
    parsed = overrides_lib.split(overrides)
    for _, key, raw in parsed:
        if key == "task":
            values["task"] = overrides_lib.parse_value("task", raw, str, False)
    root = schema_of(values.get("task"))
    for text, key, raw in parsed:
        overrides_lib.set_value(values, root, text, key, raw)
    return values


# --- parse and validate ------------------------------------------------------------------------


def parse(values: Mapping[str, Any]) -> ExperimentConfig:
    """Plain values (nested dicts) -> the typed config of the task they name.

    Raises:
      ConfigError: every problem (unknown, missing or mistyped keys, values out of range, rules
        across keys), one per line, each naming the dotted key and the value.
    """
    schema = schema_of(values.get("task") if isinstance(values, Mapping) else None)
    try:
        return schema.model_validate(_lists_as_tuples(values))
    except pydantic.ValidationError as error:
        _raise(_problems(error, schema))
    raise AssertionError("unreachable")


def _lists_as_tuples(values: Any) -> Any:
    """JSON (and ``to_dict``) writes tuples as lists; configs hold tuples only."""
    if isinstance(values, Mapping):
        return {k: _lists_as_tuples(v) for k, v in values.items()}
    if isinstance(values, (list, tuple)):
        return tuple(_lists_as_tuples(v) for v in values)
    return values


def validate(config: ExperimentConfig, num_devices: int, *, check_data: bool = True) -> None:
    """Checks what depends on where ``config`` runs, before anything compiles: the mesh
    resolves for ``num_devices``, the batches split over it (the task's rules), and, with
    ``check_data``, the data is on disk.

    Raises:
      ConfigError: naming the key and the value.
      MissingDataError: data that is not on disk (also a FileNotFoundError).
    """
    try:
        shape = resolve_mesh_shape(dict(config.mesh), num_devices)
    except ValueError as error:
        raise ConfigError(f"config.{error} (for {num_devices} devices)") from None
    _raise([f"config.{p}" for p in config.topology_problems(shape)])
    if check_data:
        config.check_data()


def _raise(problems: list[str]) -> None:
    if len(problems) == 1:
        raise ConfigError(problems[0])
    if problems:
        raise ConfigError(f"{len(problems)} config problems:\n  " + "\n  ".join(problems))


def _problems(error: pydantic.ValidationError, schema: type[ExperimentConfig]) -> list[str]:
    """pydantic's errors as lines that name the dotted key and the value."""
    problems: list[str] = []
    for item in error.errors(include_url=False):
        loc = [p for p in item["loc"] if not (isinstance(p, str) and "[" in p)]  # union tags
        where = "config" + "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in loc)
        value = item.get("input")
        if item["type"] == "value_error" and isinstance(value, Mapping):
            # a rule of a group (or of a free group's fields): lines relative to the group
            problems += [f"{where}.{line}" for line in str(item["ctx"]["error"]).splitlines()]
        elif item["type"] == "value_error":
            problems.append(f"{where}={value!r}: {item['ctx']['error']}")
        elif item["type"] == "extra_forbidden":
            parent = where.rpartition(".")[0]
            problems.append(
                f"{where}={value!r}: unknown key; the keys of {parent} are "
                f"{_keys_at(schema, loc[:-1])}"
            )
        elif item["type"] == "missing":
            problems.append(f"{where}: missing (every {where.rpartition('.')[0]} has it)")
        else:
            problems.append(f"{where}={value!r}: {item['msg']}")
    return list(dict.fromkeys(problems))


def _keys_at(schema: Any, loc: Sequence[Any]) -> list[str]:
    for part in loc:
        field = schema.model_fields.get(part) if overrides_lib.is_group(schema) else None
        schema = field.annotation if field is not None else None
    return sorted(schema.model_fields) if overrides_lib.is_group(schema) else []


# --- save, load back, compare ------------------------------------------------------------------


def to_dict(config: ExperimentConfig) -> dict[str, Any]:
    """The config as plain JSON types (tuples as lists, ``None`` as null)."""
    return config.model_dump(mode="json")


def fingerprint(config: ExperimentConfig) -> str:
    """The SHA-256 (hex) of the resolved config's JSON with sorted keys: equal for equal
    configs whatever the file or overrides that built them (``env.json``, study run names)."""
    text = json.dumps(to_dict(config), sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def save(config: ExperimentConfig, path: str | os.PathLike) -> str:
    """Writes ``to_dict(config)`` as JSON to ``path`` (a ``.json`` file) or to
    ``path/config.json`` (a work directory, created if needed); returns the file's path."""
    from etils import epath

    target = epath.Path(path)
    if target.suffix != ".json":
        target = target / "config.json"
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(json.dumps(to_dict(config), indent=2) + "\n")
    return os.fspath(target)


# Keys added since runs were first saved, with the value a run without them behaved as (or the
# documented default): a run saved before them still loads, resumes and evaluates.
ADDED_KEYS: dict[str, Any] = {
    "train.max_failed_saves": 3,  # 0.1.0 after issue 13
    "data.max_skipped_in_a_row": 1000,  # 0.1.0 after issue 13
    "optim.name": "adamw",  # 0.1.0 after issue 14
    "adapt.target_batch_size": 0,  # 0.1.0 after issue 14: the source's batch, as before
    "model.init_from_bert": "",  # 0.1.0 during issue 15 (mlm)
    "train.timing_in_metrics": True,  # 0.1.0 during issue 18 (studies)
    "model.learn_temperature": True,  # 0.1.0 during issue 18 (clip, clip_adapt)
    "data.example_cache_mb": 0,  # 0.1.0 during issue 18 (adapt): no cache, as before
}


def _add_keys_of_newer_versions(values: dict[str, Any], schema: type[ExperimentConfig]) -> None:
    """Fills ``ADDED_KEYS`` missing from a saved config (in place), where the task's schema
    has them."""
    for key, value in ADDED_KEYS.items():
        group, name = key.split(".")
        field = schema.model_fields.get(group)
        fields = getattr(field.annotation, "model_fields", {}) if field else {}
        if name in fields and isinstance(values.get(group), dict):
            values[group].setdefault(name, value)


def load_json(path: str | os.PathLike) -> ExperimentConfig:
    """A ``config.json`` written by ``save`` -> the typed config.

    Raises:
      MissingDataError: no file at ``path``.
      ConfigError: the message starts with the path: unreadable (a directory, no permission),
        not UTF-8 JSON (malformed, truncated, empty), not a JSON object, an unknown task, or
        values the task's schema refuses (each key named).
    """
    name = os.fspath(path)
    try:
        values = read_json_object(path)
    except DataError as error:
        raise ConfigError(str(error)) from None
    try:
        schema = schema_of(values.get("task"))
        _add_keys_of_newer_versions(values, schema)
        return schema.model_validate_json(json.dumps(values))
    except ConfigError as error:
        raise ConfigError(f"{name}: {error}") from None
    except pydantic.ValidationError as error:
        problems = _problems(error, schema)
        raise ConfigError(f"{name}: " + "\n  ".join(problems)) from None


def _flatten(values: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(values, Mapping):
        return {prefix.rstrip("."): values}
    out: dict[str, Any] = {}
    for key, value in values.items():
        if isinstance(value, Mapping) and value:
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def differences(
    old: ExperimentConfig | Mapping[str, Any], new: ExperimentConfig | Mapping[str, Any]
) -> list[tuple[str, Any, Any]]:
    """``[(dotted key, old value, new value)]`` for every key whose value differs (a key
    absent on one side has the value ``"<absent>"`` there)."""
    flat_old = _flatten(to_dict(old) if isinstance(old, ExperimentConfig) else old)
    flat_new = _flatten(to_dict(new) if isinstance(new, ExperimentConfig) else new)
    absent = "<absent>"
    return [
        (key, flat_old.get(key, absent), flat_new.get(key, absent))
        for key in sorted(set(flat_old) | set(flat_new))
        if flat_old.get(key, absent) != flat_new.get(key, absent)
    ]


def is_safe_on_resume(key: str) -> bool:
    """Whether a resumed run may change ``key`` (``SAFE_ON_RESUME``)."""
    return any(
        key == safe or (safe.endswith(".") and key.startswith(safe)) for safe in SAFE_ON_RESUME
    )


def resume_problems(
    saved: ExperimentConfig | Mapping[str, Any], config: ExperimentConfig, *, started: bool = True
) -> list[str]:
    """One line per key that differs from the saved config of the run being resumed and may
    not change on resume (everything but ``SAFE_ON_RESUME``; ``init_from.*`` too once the run
    has a checkpoint of its own, ``started``), with both values."""
    return [
        f"config.{key}: the run was started with {old!r}, this command has {new!r}"
        for key, old, new in differences(saved, config)
        if not (is_safe_on_resume(key) or (started and key.startswith("init_from.")))
    ]
