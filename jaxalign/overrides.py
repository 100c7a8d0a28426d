"""``--config.KEY=VALUE`` overrides: each value parsed as its key's type in a typed schema.

``split`` checks the command line's overrides (``KEY=VALUE``, a key at most once);
``set_value`` walks the schema (pydantic models, and ``ModuleFields`` free groups such as
``model.image``) down the dotted key, parses the text as that key's type and sets it in the
plain dict of config values. Every error is a ``ConfigError`` naming the override, the dotted
key and the keys or the type expected there. ``jaxalign.config.apply_overrides`` uses them.
"""

from __future__ import annotations

import ast
import re
import types
import typing
from collections.abc import Sequence
from typing import Any

import pydantic

from jaxalign.schema import ConfigError, ModuleFields


def split(overrides: Sequence[str]) -> list[tuple[str, str, str]]:
    """``[(override as given, dotted key, value text)]``; ConfigError for a malformed one or a
    key given twice."""
    parsed = [_split_one(o) for o in overrides]
    keys = [key for _, key, _ in parsed]
    for key in dict.fromkeys(keys):
        if keys.count(key) > 1:
            given = [o for o, k, _ in parsed if k == key]
            raise ConfigError(
                f"config.{key} is overridden {len(given)} times ({given}); give it once (an "
                "unquoted shell pattern such as {a,b} or * expands into several arguments)"
            )
    return parsed


def set_value(values: dict[str, Any], schema: Any, text: str, key: str, raw: str) -> None:
    """Sets ``key`` (dotted) in ``values`` to ``raw`` parsed as its type in ``schema``."""
    *parents, leaf = key.split(".")
    node: Any = values
    where = "config"
    for part in parents:
        schema, node = _descend(schema, part, node, f"{where}.{part}", text)
        where = f"{where}.{part}"
    kind, nullable = _kind(schema, leaf, f"{where}.{leaf}", text)
    node[leaf] = parse_value(f"{where}.{leaf}", raw, kind, nullable)


def _split_one(override: str) -> tuple[str, str, str]:
    text = re.sub(r"^(--)?(config\.)?", "", override.strip())
    key, sep, raw = text.partition("=")
    if not sep or not key:
        raise ConfigError(f"override {override!r}: expected KEY=VALUE, e.g. optim.lr=1e-3")
    return override, key, raw


def _field(schema: Any, name: str, where: str, override: str) -> Any:
    """The pydantic field ``name`` of a group's model; ConfigError listing the keys there."""
    fields = schema.model_fields if is_group(schema) else {}
    if name not in fields:
        raise ConfigError(
            f"override {override!r}: unknown key {where}; the keys there are {sorted(fields)}"
        )
    return fields[name]


def is_group(annotation: Any) -> bool:
    return isinstance(annotation, type) and issubclass(annotation, pydantic.BaseModel)


def _module_fields(field: Any) -> ModuleFields | None:
    return next((m for m in field.metadata if isinstance(m, ModuleFields)), None)


def _descend(schema: Any, part: str, node: Any, where: str, override: str) -> tuple[Any, Any]:
    """One step down the key: the sub-schema (a group's model, or a ``ModuleFields``) and the
    sub-dict of the values (created when the config file left the group out)."""
    if isinstance(schema, ModuleFields):
        raise ConfigError(f"override {override!r}: {where.rpartition('.')[0]} holds values only")
    field = _field(schema, part, where, override)
    sub = _module_fields(field) or field.annotation
    if not (is_group(sub) or isinstance(sub, ModuleFields)):
        raise ConfigError(f"override {override!r}: {where} is a value, not a group of keys")
    if not isinstance(node.get(part), dict):
        node[part] = {}
    return sub, node[part]


def _kind(schema: Any, leaf: str, where: str, override: str) -> tuple[type, bool]:
    """``(type, may be None)`` of the key ``leaf`` of ``schema``."""
    if isinstance(schema, ModuleFields):
        if leaf in schema.reserved:
            raise ConfigError(
                f"override {override!r}: {where} is set by config.{schema.reserved[leaf]}"
            )
        fields = schema.fields()
        if leaf not in fields:
            raise ConfigError(
                f"override {override!r}: unknown key {where}; the keys there are {schema.choices()}"
            )
        return type(fields[leaf]), fields[leaf] is None
    field = _field(schema, leaf, where, override)
    annotation, nullable = field.annotation, False
    if is_group(annotation) or _module_fields(field):
        keys = sorted(annotation.model_fields) if is_group(annotation) else "free fields"
        raise ConfigError(
            f"override {override!r}: {where} is a group of keys ({keys}); override one of them"
        )
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        members = [a for a in typing.get_args(annotation) if a is not type(None)]
        nullable, annotation = len(members) < len(typing.get_args(annotation)), members[0]
    while typing.get_origin(annotation) is typing.Annotated:
        annotation = typing.get_args(annotation)[0]
    if typing.get_origin(annotation) is typing.Literal:
        return type(typing.get_args(annotation)[0]), nullable
    if typing.get_origin(annotation) in (tuple, list):
        return tuple, nullable
    return annotation, nullable


_TRUE, _FALSE = ("true", "1", "yes", "on"), ("false", "0", "no", "off")


def parse_value(key: str, raw: str, kind: type, nullable: bool) -> Any:
    """Parses an override's text as ``kind``; raises ConfigError naming key, value and type."""
    text = raw.strip()
    key = key.removeprefix("config.")
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
            if not text.startswith(("(", "[")):
                return (parse_value(key, raw, str, False),)  # one string: a tuple of one
            value = ast.literal_eval(text)
            if not isinstance(value, (tuple, list)):
                raise ValueError(text)
            return tuple(value)
    except (ValueError, SyntaxError):
        example = {tuple: "('a', 'b') or one string", bool: "true or false"}.get(kind, "")
        hint = f", e.g. {example}" if example else ""
        raise ConfigError(f"config.{key}={raw!r}: expected {kind.__name__}{hint}") from None
    try:  # a field without a fixed type (None): a Python literal, else the text
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return raw
