"""The one strict parser from plain data (YAML, JSON) to frozen dataclasses, and back: unknown keys,
missing keys and values of the wrong type are `ConfigError`s that name the key."""

from __future__ import annotations

import copy
import dataclasses
import re
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import yaml

from synclip.errors import UserError


class ConfigError(UserError):
    """A params file, override or stored config the caller has to fix; the message names the key."""


def from_dict(cls: type, data: Any, source: str = "params", prefix: str = "", defaults: bool = True) -> Any:
    """Build the dataclass `cls` from a mapping, strictly: no unknown or mistyped keys, and no missing
    key unless `defaults` lets a field with a default be left out.

    params.yaml sections must list every field (`defaults=False`); a network's stored config may leave
    out fields that have defaults (older artifacts keep loading when a field with a default is added).
    """
    if not isinstance(data, Mapping):
        where = f"'{prefix}'" if prefix else "the top level"
        raise ConfigError(f"{source}: {where} must be a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        key = join(prefix, str(unknown[0]))
        raise ConfigError(f"{source}: unknown key '{key}' (known here: {', '.join(fields)})")
    values = {}
    for name, field in fields.items():
        key = join(prefix, name)
        if name not in data:
            has_default = (
                field.default is not dataclasses.MISSING or field.default_factory is not dataclasses.MISSING
            )
            if defaults and has_default:
                continue
            raise ConfigError(f"{source}: missing key '{key}'")
        values[name] = _convert(hints[name], data[name], source, key, defaults)
    return cls(**values)


def to_dict(params: Any) -> dict[str, Any]:
    """Plain nested dict (tuples as lists), the inverse of `from_dict`."""
    return _plain(dataclasses.asdict(params))


def _convert(hint: Any, value: Any, source: str, key: str, defaults: bool) -> Any:
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if dataclasses.is_dataclass(hint):
        return from_dict(hint, value, source, key, defaults)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        options = [a for a in args if a is not type(None)]
        errors = []
        for option in options:
            try:
                return _convert(option, value, source, key, defaults)
            except ConfigError as error:
                errors.append(error)
        if len(options) == 1:
            raise errors[0]
        raise ConfigError(f"{source}: '{key}' must be {_describe(hint)}, got {_show(value)}")
    if origin is Literal:
        if value in args and type(value) in {type(a) for a in args}:
            return value
        choices = ", ".join(repr(a) for a in args)
        raise ConfigError(f"{source}: '{key}' must be one of {choices}, got {_show(value)}")
    if origin in (tuple, list):
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{source}: '{key}' must be a list, got {_show(value)}")
        if origin is tuple and not (len(args) == 2 and args[1] is Ellipsis):
            if len(value) != len(args):
                raise ConfigError(f"{source}: '{key}' must have {len(args)} items, got {len(value)}")
            return tuple(
                _convert(a, v, source, f"{key}[{i}]", defaults)
                for i, (a, v) in enumerate(zip(args, value, strict=True))
            )
        items = [_convert(args[0], v, source, f"{key}[{i}]", defaults) for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict or hint is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(f"{source}: '{key}' must be a mapping, got {_show(value)}")
        if not args:
            return dict(value)
        return {k: _convert(args[1], v, source, f"{key}.{k}", defaults) for k, v in value.items()}
    if hint is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        # PyYAML reads 1e-3 (no dot) as a string; take exponent notation as the number it is
        if isinstance(value, str) and re.fullmatch(r"[-+]?\d+(\.\d*)?[eE][-+]?\d+", value.strip()):
            return float(value)
    elif hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif hint in (str, bool):
        if isinstance(value, hint):
            return value
    elif hint is Any:
        return value
    else:
        raise TypeError(f"config field '{key}' has an unsupported type {hint!r}")
    raise ConfigError(f"{source}: '{key}' must be {_describe(hint)}, got {_show(value)}")


# --- raw-dict helpers ----------------------------------------------------------------------------


def read_mapping(path: Path) -> dict[str, Any]:
    """A YAML file whose top level is a mapping (an empty file is an empty mapping)."""
    if not path.is_file():
        raise ConfigError(f"{path} does not exist")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        raise ConfigError(f"{path} is not valid YAML: {error}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping, got {type(data).__name__}")
    return data


def parse_override(item: str) -> tuple[str, Any]:
    """`key.subkey=value` → (dotted key, the YAML value)."""
    key, sep, text = item.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ConfigError(f"override {item!r} must look like key.subkey=value")
    try:
        value = yaml.safe_load(text) if text.strip() else ""
    except yaml.YAMLError as error:
        raise ConfigError(f"override {item!r}: value is not valid YAML: {error}") from None
    return key, value


def set_strict(raw: dict[str, Any], dotted: str, value: Any, source: str) -> None:
    """Set an existing dotted key; a key that is not there already is an error."""
    node = raw
    parts = dotted.split(".")
    for depth, part in enumerate(parts):
        if not isinstance(node, dict) or part not in node:
            raise ConfigError(f"{source}: unknown key '{'.'.join(parts[: depth + 1])}'")
        if depth == len(parts) - 1:
            node[part] = copy.deepcopy(value)
        else:
            node = node[part]


def merge_strict(base: dict[str, Any], update: Mapping[str, Any], source: str, prefix: str = "") -> None:
    """Apply nested overrides to `base` in place; an override of a key `base` lacks is an error."""
    for name, value in update.items():
        key = join(prefix, str(name))
        if name not in base:
            raise ConfigError(f"{source}: unknown key '{key}'")
        if isinstance(value, Mapping) and isinstance(base[name], dict):
            merge_strict(base[name], value, source, key)
        else:
            base[name] = copy.deepcopy(value)


def join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def _describe(hint: Any) -> str:
    if hint is type(None):
        return "null"
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_describe(a) for a in typing.get_args(hint))
    if origin in (tuple, list):
        return "a list"
    return {int: "an integer", float: "a number", str: "a string", bool: "true or false"}.get(hint, str(hint))


def _show(value: Any) -> str:
    text = repr(value)
    if len(text) > 60:
        text = text[:57] + "..."
    return f"{type(value).__name__} {text}"


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value
