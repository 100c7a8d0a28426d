"""Configs: load ``"file.py:preset"``, apply ``KEY=VALUE`` overrides, validate, save.

A config file defines ``get_config(arg) -> ml_collections.ConfigDict`` (``configs/clip.py``)::

    config = load("configs/clip.py:demo", ["optim.lr=1e-3", "--config.train.steps=100"])
    validate(config, num_devices=jax.device_count())  # before anything compiles
    save(config, workdir)  # workdir/config.json

``SCHEMAS[task]`` is the one description of a task's keys: their types and allowed values.
The config files give the values, and ``validate`` checks that the two agree: an unknown or
missing key, a wrong type or a value out of range fails with a ``ConfigError`` (a ValueError)
that names the dotted key and the value, as does a rule across keys (the mesh must fit the
devices, the batch must split over it) and, with ``check_data``, data that is not there.
"""

from __future__ import annotations

import ast
import dataclasses
import importlib.util
import json
import math
import os
import re
from collections.abc import Callable, Collection, Mapping, Sequence
from typing import Any

import ml_collections


class ConfigError(ValueError):
    """A config problem; the message names each offending key (``config.optim.lr``) and value."""


class MissingDataError(ConfigError, FileNotFoundError):
    """The config's data (TFDS directory, webdataset shards, tokenizer) is not on disk."""


@dataclasses.dataclass(frozen=True)
class Field:
    """A leaf of a schema: its type (``int``, ``float``, ``bool``, ``str`` or ``tuple``), the
    values it may take (``choices``, or a closed/open interval ``low``..``high``), whether it may
    be ``None`` and, for tuples, the type of the items. ``choices`` may be a function (a registry
    imported only when validating)."""

    kind: type
    choices: Collection[Any] | Callable[[], Collection[Any]] | None = None
    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    nullable: bool = False
    item: type | None = None

    def allowed(self) -> Collection[Any] | None:
        return self.choices() if callable(self.choices) else self.choices

    def interval(self) -> str:
        low = "(-inf" if self.low is None else ("(" if self.low_open else "[") + f"{self.low:g}"
        high = "inf)" if self.high is None else f"{self.high:g}" + (")" if self.high_open else "]")
        return f"{low}, {high}"

    def check(self, value: Any) -> str | None:
        """``None`` when ``value`` is allowed, else what is wrong with it."""
        if value is None:
            return None if self.nullable else f"expected {self.kind.__name__}, got None"
        if not _is_a(value, self.kind):
            return f"expected {self.kind.__name__}, got {type(value).__name__}"
        if self.item is not None and not all(_is_a(v, self.item) for v in value):
            return f"expected a tuple of {self.item.__name__}"
        allowed = self.allowed()
        if allowed is not None and value not in allowed:
            return f"must be one of {sorted(allowed)}"
        if self.kind is float and not math.isfinite(value):
            return "must be finite"
        below = self.low is not None and (value <= self.low if self.low_open else value < self.low)
        above = self.high is not None and (
            value >= self.high if self.high_open else value > self.high
        )
        if below or above:
            return f"must be in {self.interval()}"
        return None


@dataclasses.dataclass(frozen=True)
class Overrides:
    """A group of free keys: fields of a module that override its defaults (``model.image``).

    ``fields()`` gives ``{name: default}``; a value must have its default's type. ``reserved``
    names fields set elsewhere in the config, with where.
    """

    fields: Callable[[], Mapping[str, Any]]
    reserved: Mapping[str, str] = dataclasses.field(default_factory=dict)

    def check(self, key: str, value: Any) -> str | None:
        fields = self.fields()
        if key in self.reserved:
            return f"set by {self.reserved[key]}, not here"
        if key not in fields:
            return f"unknown field; choose from {sorted(set(fields) - set(self.reserved))}"
        default = fields[key]
        if default is not None and not _is_a(value, type(default)):
            return f"expected {type(default).__name__} (default {default!r})"
        return None


def _is_a(value: Any, kind: type) -> bool:
    if kind is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if kind is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if kind is tuple:
        return isinstance(value, (tuple, list))
    return isinstance(value, kind)


def _module_fields(path: str, name: str) -> Callable[[], dict[str, Any]]:
    def fields() -> dict[str, Any]:
        cls = getattr(importlib.import_module(path), name)
        return {
            f.name: f.default
            for f in dataclasses.fields(cls)
            if f.name not in ("parent", "name") and f.default is not dataclasses.MISSING
        }

    return fields


def _image_tower_fields() -> dict[str, Any]:
    """Fields of either image tower (``ViT`` or ``ConvNet``); ``_clip_rules`` checks that the
    ones set belong to the preset's tower."""
    return {
        **_module_fields("jaxalign.models.cnn", "ConvNet")(),
        **_module_fields("jaxalign.models.vit", "ViT")(),
    }


def _registry(path: str, name: str) -> Callable[[], Collection[str]]:
    return lambda: tuple(getattr(importlib.import_module(path), name))


# The rest of a dimension: only ``mesh`` sizes take -1, and ``resolve_mesh_shape`` checks them.
_MESH_SIZE = Field(int)
_POSITIVE = Field(int, low=1)
_COUNT = Field(int, low=0)
_UNIT = Field(float, low=0.0, high=1.0, high_open=True)  # [0, 1)

CLIP_SCHEMA: dict[str, Any] = {
    "seed": Field(int, low=0, high=2**32, high_open=True),
    "task": Field(str, choices=("clip",)),
    "model": {
        "preset": Field(str, choices=_registry("jaxalign.models", "PRESETS")),
        "dtype": Field(str, choices=("float32", "bfloat16")),
        "remat": Field(str, choices=_registry("jaxalign.models.layers", "REMAT_POLICIES")),
        "logit_scale_init": Field(float),
        "logit_bias_init": Field(float, nullable=True),
        "image": Overrides(_image_tower_fields, {"dtype": "model.dtype", "remat": "model.remat"}),
        "text": Overrides(
            _module_fields("jaxalign.models.text", "TextTransformer"),
            {"dtype": "model.dtype", "remat": "model.remat", "max_len": "data.max_len"},
        ),
    },
    "data": {
        "source": Field(str, choices=("builtin", "tfds", "webdataset")),
        "name": Field(str),
        "data_dir": Field(str),
        "train_split": Field(str),
        "image_size": _POSITIVE,
        "max_len": _POSITIVE,
        "shards": Field(str),
        "tokenizer": Field(str),
        "worker_count": _COUNT,
        "prefetch": _COUNT,
    },
    "objective": {
        "loss": Field(str, choices=("clip", "siglip")),
        "impl": Field(str, choices=_registry("jaxalign.objectives.contrastive", "IMPLS")),
        "tile": _POSITIVE,
        "label_smoothing": _UNIT,
    },
    "optim": {
        "lr": Field(float, low=0.0, low_open=True),
        "warmup_steps": _COUNT,
        "min_lr_ratio": Field(float, low=0.0, high=1.0),
        "weight_decay": Field(float, low=0.0),
        "b1": _UNIT,
        "b2": _UNIT,
        "eps": Field(float, low=0.0, low_open=True),
        "clip_norm": Field(float, low=0.0),
        "micro_batches": _POSITIVE,
        "max_nonfinite_in_a_row": _POSITIVE,
    },
    "train": {
        "global_batch_size": _POSITIVE,
        "steps": _POSITIVE,
        "log_every": _POSITIVE,
        "checkpoint_every": _POSITIVE,
        "keep_checkpoints": _POSITIVE,
        "eval_every": _POSITIVE,
    },
    "evals": {
        "zeroshot_split": Field(str),
        "retrieval_split": Field(str),
        "templates": Field(tuple, item=str),
        "batch_size": _POSITIVE,
        "max_examples": _COUNT,
    },
    "mesh": {"data": _MESH_SIZE, "fsdp": _MESH_SIZE, "tensor": _MESH_SIZE},
}

SCHEMAS: dict[str, dict[str, Any]] = {"clip": CLIP_SCHEMA}


# --- load and override -------------------------------------------------------------------------


def load(spec: str, overrides: Sequence[str] = ()) -> ml_collections.ConfigDict:
    """``"path/to/file.py[:arg]"`` -> that file's ``get_config(arg)``, overridden, then locked
    (no key can be added afterwards).

    Raises:
      FileNotFoundError: the file does not exist (the message names the path).
      ConfigError: a malformed spec, a file without ``get_config``, or a bad override; an
        unknown preset raises the config file's own ValueError (naming the choices).
    """
    match = re.fullmatch(r"(?P<path>.+?\.py)(?::(?P<arg>.*))?", spec)
    if not match:
        raise ConfigError(f"config spec {spec!r}: expected 'path/to/file.py' or 'file.py:preset'")
    path = os.path.expanduser(match["path"])
    if not os.path.isfile(path):
        raise FileNotFoundError(f"config file {path!r} (from spec {spec!r}) does not exist")
    name = "_jaxalign_config_" + re.sub(r"\W", "_", os.path.splitext(os.path.basename(path))[0])
    module_spec = importlib.util.spec_from_file_location(name, path)
    assert module_spec is not None and module_spec.loader is not None
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    get_config = getattr(module, "get_config", None)
    if not callable(get_config):
        raise ConfigError(f"config file {path!r} defines no get_config(arg) function")
    config = get_config() if match["arg"] is None else get_config(match["arg"])
    if not isinstance(config, ml_collections.ConfigDict):
        raise ConfigError(f"{path}: get_config returned {type(config).__name__}, not a ConfigDict")
    apply_overrides(config, overrides)
    config.lock()
    return config


def apply_overrides(
    config: ml_collections.ConfigDict, overrides: Sequence[str]
) -> ml_collections.ConfigDict:
    """Sets each ``"KEY=VALUE"`` (also ``"--config.KEY=VALUE"``) in ``config``, in place.

    ``VALUE`` is parsed as the existing field's type: ``int``, ``float``, ``bool`` (true / false
    / 1 / 0 / yes / no), ``str`` (as given; quotes optional), ``tuple`` (a Python literal,
    ``"('a {}', 'the {}')"``); ``none`` / ``null`` for a field that may be ``None``. New keys are
    accepted only in groups of free fields (``model.image.pool=map``), typed by the field's
    default.

    Raises:
      ConfigError: an unknown key (naming the dotted key and the keys at that level), or a value
        that does not parse as the field's type (naming key, value and type).
    """
    schema = SCHEMAS.get(config.get("task")) if "task" in config else None
    for override in overrides:
        text = re.sub(r"^(--)?(config\.)?", "", override.strip())
        key, sep, raw = text.partition("=")
        if not sep or not key:
            raise ConfigError(f"override {override!r}: expected KEY=VALUE, e.g. optim.lr=1e-3")
        *parents, leaf = key.split(".")
        node, node_schema, where = config, schema, "config"
        for part in parents:
            if not isinstance(node, ml_collections.ConfigDict) or part not in node:
                raise ConfigError(_unknown_key(f"{where}.{part}", node, override))
            node, where = node[part], f"{where}.{part}"
            node_schema = node_schema.get(part) if isinstance(node_schema, dict) else None
        if not isinstance(node, ml_collections.ConfigDict):
            raise ConfigError(f"override {override!r}: {where} is a value, not a group of keys")
        if leaf in node:
            if isinstance(node[leaf], ml_collections.ConfigDict):
                raise ConfigError(
                    f"override {override!r}: {where}.{leaf} is a group of keys "
                    f"({sorted(node[leaf])}); override one of them"
                )
            kind, nullable = node.get_type(leaf), _is_placeholder(node, leaf)
        elif (
            isinstance(node_schema, Overrides)
            and leaf in node_schema.fields()
            and leaf not in node_schema.reserved
        ):
            default = node_schema.fields()[leaf]
            kind, nullable = type(default), default is None
        else:
            raise ConfigError(_unknown_key(f"{where}.{leaf}", node, override, node_schema))
        value = _parse(f"{where}.{leaf}", raw, kind, nullable)
        with config.unlocked():
            node[leaf] = value
    return config


def _is_placeholder(node: ml_collections.ConfigDict, key: str) -> bool:
    return isinstance(node._fields[key], ml_collections.FieldReference)


def _unknown_key(key: str, node: Any, override: str, schema: Any = None) -> str:
    available = sorted(node) if isinstance(node, ml_collections.ConfigDict) else []
    if isinstance(schema, Overrides):
        leaf = key.rpartition(".")[2]
        if leaf in schema.reserved:
            return f"override {override!r}: {key} is set by config.{schema.reserved[leaf]}"
        available = sorted(set(schema.fields()) - set(schema.reserved))
    return f"override {override!r}: unknown key {key}; the keys there are {available}"


_TRUE, _FALSE = ("true", "1", "yes", "on"), ("false", "0", "no", "off")


def _parse(key: str, raw: str, kind: type, nullable: bool) -> Any:
    """Parses an override's text as ``kind``; raises ConfigError naming key, value and type."""
    text = raw.strip()
    if (nullable or kind is type(None)) and text.lower() in ("none", "null"):
        return None
    try:
        if kind is bool:
            if text.lower() in _TRUE + _FALSE:
                return text.lower() in _TRUE
            raise ValueError(text)
        if kind is int:
            return int(text)
        if kind is float:
            return float(text)
        if kind is str:
            if len(text) >= 2 and text[0] == text[-1] and text[0] in "'\"":
                try:
                    return str(ast.literal_eval(text))
                except (ValueError, SyntaxError):
                    pass
            return raw
        if kind in (tuple, list):
            value = ast.literal_eval(text)
            if not isinstance(value, (tuple, list)):
                raise ValueError(text)
            return tuple(value)
    except (ValueError, SyntaxError):
        example = {tuple: "('a {}', 'the {}')", bool: "true or false"}.get(kind, "")
        hint = f", e.g. {example}" if example else ""
        raise ConfigError(
            f"config.{key.removeprefix('config.')}={raw!r}: expected {kind.__name__}{hint}"
        ) from None
    try:  # a field without a fixed type (None): a Python literal, else the text
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return raw


# --- validate ----------------------------------------------------------------------------------


def validate(
    config: ml_collections.ConfigDict, num_devices: int, *, check_data: bool = True
) -> None:
    """Checks ``config`` against its task's schema and rules, before anything compiles.

    Rules: keys and types as ``SCHEMAS[config.task]``; choices and ranges; the mesh resolves
    for ``num_devices``; ``train.global_batch_size`` divides over the batch shards
    (``mesh.data * mesh.fsdp``) and over ``optim.micro_batches`` times them, and
    ``evals.batch_size`` over the shards; every ``evals.templates`` entry has one ``{}``; the
    loss matches the model's bias; the image size is a multiple of the patch size; the data
    source has what it needs. With ``check_data`` the data must exist: the TFDS directory
    ``data_dir/name``, files for every ``data.shards`` entry, the ``data.tokenizer`` directory.

    Raises:
      ConfigError: every problem of the first failing stage (keys and values, then rules),
        one per line, each naming the key and the value.
      MissingDataError: data that is not on disk (also a FileNotFoundError).
    """
    task = config.get("task") if isinstance(config, ml_collections.ConfigDict) else None
    if task not in SCHEMAS:
        raise ConfigError(f"config.task={task!r}: unknown task; choose from {sorted(SCHEMAS)}")
    _raise(_check_tree(config, SCHEMAS[task], "config"))
    _raise(_clip_rules(config, num_devices))
    if check_data:
        _check_data(config)


def _raise(problems: list[str]) -> None:
    if len(problems) == 1:
        raise ConfigError(problems[0])
    if problems:
        raise ConfigError(f"{len(problems)} config problems:\n  " + "\n  ".join(problems))


def _check_tree(node: Any, schema: Mapping[str, Any], where: str) -> list[str]:
    if not isinstance(node, ml_collections.ConfigDict):
        return [f"{where}={node!r}: expected a group of keys {sorted(schema)}"]
    problems = [
        f"{where}.{key}={node[key]!r}: unknown key; the keys of {where} are {sorted(schema)}"
        for key in node
        if key not in schema
    ]
    for key, spec in schema.items():
        if key not in node:
            problems.append(f"{where}.{key}: missing (every {where} has it)")
        elif isinstance(spec, dict):
            problems += _check_tree(node[key], spec, f"{where}.{key}")
        elif isinstance(spec, Overrides):
            group = node[key]
            if not isinstance(group, ml_collections.ConfigDict):
                problems.append(f"{where}.{key}={group!r}: expected a group of fields")
                continue
            for name in group:
                problem = spec.check(name, group[name])
                if problem:
                    problems.append(f"{where}.{key}.{name}={group[name]!r}: {problem}")
        else:
            problem = spec.check(node[key])
            if problem:
                problems.append(f"{where}.{key}={node[key]!r}: {problem}")
    return problems


def _clip_rules(config: ml_collections.ConfigDict, num_devices: int) -> list[str]:
    from jaxalign.parallel.mesh import BATCH_AXES, resolve_mesh_shape

    problems = []
    try:
        shape = resolve_mesh_shape(dict(config.mesh), num_devices)
    except ValueError as error:
        return [f"config.{error} (for {num_devices} devices)"]
    shards = math.prod(shape[axis] for axis in BATCH_AXES)
    batch, micro = config.train.global_batch_size, config.optim.micro_batches
    if batch % (micro * shards):
        problems.append(
            f"config.train.global_batch_size={batch}: must be a multiple of optim.micro_batches "
            f"({micro}) x the batch shards (mesh data x fsdp = {shards}, mesh {shape})"
        )
    if config.evals.batch_size % shards:
        problems.append(
            f"config.evals.batch_size={config.evals.batch_size}: must be a multiple of the batch "
            f"shards (mesh data x fsdp = {shards}, mesh {shape})"
        )
    problems += [
        f"config.evals.templates={tuple(config.evals.templates)!r}: {t!r} needs one '{{}}' "
        "for the class name"
        for t in config.evals.templates
        if t.count("{}") != 1
    ]
    if config.evals.zeroshot_split and not config.evals.templates:
        problems.append("config.evals.templates=(): zero-shot evaluation needs a template")
    model, objective = config.model, config.objective
    if objective.loss == "siglip" and model.logit_bias_init is None:
        problems.append(
            "config.model.logit_bias_init=None: objective.loss='siglip' needs a bias (SigLIP: -10)"
        )
    if objective.loss == "clip" and model.logit_bias_init is not None:
        problems.append(
            f"config.model.logit_bias_init={model.logit_bias_init!r}: objective.loss='clip' has "
            "no bias; set it to none"
        )
    if objective.loss == "siglip" and objective.label_smoothing:
        problems.append(
            f"config.objective.label_smoothing={objective.label_smoothing!r}: only "
            "objective.loss='clip' smooths labels"
        )
    problems += _image_tower_rules(model, config.data.image_size)
    return problems + _data_rules(config.data, config.evals)


def _image_tower_rules(model: ml_collections.ConfigDict, image_size: int) -> list[str]:
    """``model.image`` fields must belong to the preset's tower; the image size must fit it."""
    from jaxalign.models.dual_encoder import CNN_FIELDS, PRESETS
    from jaxalign.models.vit import decode_variant

    cnn = PRESETS[model.preset].image_variant == "cnn"
    tower = "ConvNet" if cnn else "ViT"
    fields = _module_fields("jaxalign.models." + ("cnn" if cnn else "vit"), tower)()
    problems = [
        f"config.model.image.{key}={model.image[key]!r}: not a field of the {tower} image tower "
        f"of model.preset={model.preset!r}; choose from {sorted(set(fields) - {'dtype', 'remat'})}"
        for key in model.image
        if key not in fields
    ]
    if problems:
        return problems
    if cnn:
        stride = 2 ** len(model.image.get("channels", CNN_FIELDS["channels"]))
        what = f"the ConvNet's total stride {stride}"
    else:
        stride = (
            model.image.get("patch_size")
            or decode_variant(PRESETS[model.preset].image_variant)["patch_size"]
        )
        what = f"the patch size {stride}"
    if image_size % stride:
        problems.append(
            f"config.data.image_size={image_size}: must be a multiple of {what} "
            f"(model.preset={model.preset!r})"
        )
    return problems


def _data_rules(data: ml_collections.ConfigDict, evals: ml_collections.ConfigDict) -> list[str]:
    problems = []
    if data.source == "builtin":
        from jaxalign.data.builtin import BUILTIN

        if data.name not in BUILTIN:
            problems.append(
                f"config.data.name={data.name!r}: not a built-in dataset; choose from "
                f"{sorted(BUILTIN)} (or set data.source)"
            )
    elif not data.tokenizer:
        problems.append(
            f"config.data.tokenizer='': data.source={data.source!r} needs a tokenizer directory "
            "(the built-in caption tokenizer only covers data.source='builtin')"
        )
    if data.source == "tfds" and not data.name:
        problems.append("config.data.name='': data.source='tfds' needs the dataset's name")
    if data.source == "webdataset":
        if not data.shards:
            problems.append("config.data.shards='': data.source='webdataset' needs shards")
        for key in ("zeroshot_split", "retrieval_split"):
            if evals[key]:
                problems.append(
                    f"config.evals.{key}={evals[key]!r}: webdataset shards have no splits; use "
                    "data.source='tfds' or 'builtin' for evals, or set it to ''"
                )
    return problems


def _check_data(config: ml_collections.ConfigDict) -> None:
    data = config.data
    if data.source == "tfds":
        data_dir = os.path.expanduser(data.data_dir)
        path = os.path.join(data_dir, data.name.split(":")[0])
        prepared = os.path.isfile(os.path.join(data_dir, "dataset_info.json"))
        if not (os.path.isdir(path) or prepared):
            raise MissingDataError(
                f"config.data.name={data.name!r}: no TFDS dataset at {path!r} "
                f"(config.data.data_dir={data.data_dir!r})"
            )
    if data.source == "webdataset":
        from jaxalign.data.sources import expand_shards

        paths = expand_shards(data.shards)
        missing = [p for p in paths if not os.path.isfile(p)]
        if not paths:
            raise MissingDataError(f"config.data.shards={data.shards!r}: matches no files")
        if missing:
            raise MissingDataError(
                f"config.data.shards={data.shards!r}: {len(missing)} of its {len(paths)} "
                f"shards are missing, e.g. {missing[0]!r}"
            )
    if data.tokenizer and not os.path.isdir(os.path.expanduser(data.tokenizer)):
        raise MissingDataError(
            f"config.data.tokenizer={data.tokenizer!r}: no tokenizer directory there"
        )


# --- save --------------------------------------------------------------------------------------


def to_dict(config: ml_collections.ConfigDict) -> dict[str, Any]:
    """The config as plain JSON types: nested dicts, tuples as lists, placeholders as None."""

    def plain(value: Any) -> Any:
        if isinstance(value, Mapping):
            return {str(k): plain(v) for k, v in value.items()}
        if isinstance(value, (tuple, list)):
            return [plain(v) for v in value]
        if value is None or isinstance(value, (bool, int, float, str)):
            return value
        raise ConfigError(f"config value {value!r} ({type(value).__name__}) is not JSON")

    return plain(config.to_dict())


def from_dict(values: Mapping[str, Any]) -> ml_collections.ConfigDict:
    """The inverse of ``to_dict``: tuples back where the task's schema has them (JSON turned
    them into lists), ``None`` back into typed placeholders; locked, like ``load``'s."""
    schema = SCHEMAS.get(values.get("task"))
    if schema is None:
        raise ConfigError(
            f"config.task={values.get('task')!r}: unknown task; choose from {sorted(SCHEMAS)}"
        )

    def build(node: Mapping[str, Any], spec: Any) -> ml_collections.ConfigDict:
        out = ml_collections.ConfigDict()
        for key, value in node.items():
            sub = spec.get(key) if isinstance(spec, dict) else None
            if isinstance(value, Mapping):
                out[key] = build(value, sub if sub is not None else {})
                continue
            if isinstance(spec, Overrides):  # a free field: typed by its default
                is_tuple = isinstance(spec.fields().get(key), tuple)
            else:
                is_tuple = isinstance(sub, Field) and sub.kind is tuple
            if isinstance(value, list) and is_tuple:
                value = tuple(value)
            if value is None and isinstance(sub, Field) and sub.nullable:
                value = ml_collections.config_dict.placeholder(sub.kind)
            out[key] = value
        return out

    config = build(values, schema)
    config.lock()
    return config


def load_json(path: str | os.PathLike) -> ml_collections.ConfigDict:
    """A ``config.json`` written by ``save`` -> the config (see ``from_dict``)."""
    with open(path) as f:
        return from_dict(json.load(f))


def save(config: ml_collections.ConfigDict, path: str | os.PathLike) -> str:
    """Writes ``to_dict(config)`` as JSON to ``path`` (a ``.json`` file) or to
    ``path/config.json`` (a work directory, created if needed); returns the file's path."""
    from etils import epath

    target = epath.Path(path)
    if target.suffix != ".json":
        target = target / "config.json"
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(json.dumps(to_dict(config), indent=2) + "\n")
    return os.fspath(target)
