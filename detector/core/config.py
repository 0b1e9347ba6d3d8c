"""Typed configuration: YAML files loaded into dataclasses, ``a.b=value`` overrides.

Every config is a (nested) dataclass. ``from_mapping`` builds one from a plain mapping and rejects
unknown keys with the closest known key as a suggestion, naming the file the mapping came from.
``apply_overrides`` applies command-line ``key=value`` strings (dotted for nested keys, values
parsed as YAML scalars) to a mapping before it is turned into a dataclass. Building models or
optimizers is not this module's job.
"""

from __future__ import annotations

import dataclasses
import difflib
import sys
import sysconfig
import types
import typing
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import yaml

T = TypeVar("T")


class ConfigError(ValueError):
    """A config file or override is wrong; the message names the file and the key."""


def configs_dir() -> Path:
    """The project's ``configs/`` folder: beside the package in a clone or an editable install,
    else where a wheel install put it (``<prefix>/share/detector/configs``, the ``data-files``
    of pyproject.toml)."""
    beside = Path(__file__).resolve().parents[2] / "configs"
    if beside.is_dir():
        return beside
    for prefix in (sysconfig.get_path("data"), sys.prefix):
        installed = Path(prefix) / "share" / "detector" / "configs"
        if installed.is_dir():
            return installed
    return beside  # missing: callers name the file they could not read


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping with ``yaml.safe_load``; errors name the file."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read config file ({exc.strerror})") from exc
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(describe_yaml_error(path, exc)) from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level, got {type(data).__name__}")
    return data


def describe_yaml_error(path: str | Path, exc: yaml.YAMLError) -> str:
    """``FILE: line L, column C: not valid YAML: problem (context at line N)`` for a PyYAML error,
    without PyYAML's ``in "<unicode string>"`` quotes."""
    mark = getattr(exc, "problem_mark", None)
    where = str(path)
    if mark is not None:
        where += f": line {mark.line + 1}, column {mark.column + 1}"
    problem = getattr(exc, "problem", None)
    if not problem:
        return f"{where}: not valid YAML ({type(exc).__name__})"
    context, context_mark = getattr(exc, "context", None), getattr(exc, "context_mark", None)
    if context and context_mark is not None:
        problem += f" ({context} at line {context_mark.line + 1})"
    elif context:
        problem += f" ({context})"
    return f"{where}: not valid YAML: {problem}"


def suggest(key: str, known: Iterable[str]) -> str:
    """`` (did you mean 'x'?)`` for the closest of ``known``, or an empty string."""
    close = difflib.get_close_matches(key, list(known), n=1, cutoff=0.5)
    return f" (did you mean '{close[0]}'?)" if close else ""


def _convert(value: Any, hint: Any, where: str) -> Any:
    """Check ``value`` against the type ``hint`` and convert where it is safe (lists to tuples,
    ints to floats, mappings to dataclasses)."""
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if hint is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _convert(value, arg, where)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(errors[0] if errors else f"{where}: unexpected value {value!r}")
    if dataclasses.is_dataclass(hint):
        if not isinstance(value, Mapping):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return from_mapping(hint, value, where)  # type: ignore[arg-type]
    if origin in (tuple, list):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(value) != len(args):
                raise ConfigError(f"{where}: expected {len(args)} values, got {len(value)}")
            items = [_convert(v, a, f"{where}[{i}]") for i, (v, a) in enumerate(zip(value, args))]
        else:
            item_hint = args[0] if args else Any
            items = [_convert(v, item_hint, f"{where}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict or hint is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return dict(value)
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return value
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true or false, got {value!r}")
        return value
    if hint is str:
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return str(value)
    return value


def from_mapping(cls: type[T], data: Mapping[str, Any], source: str = "config") -> T:
    """Build dataclass ``cls`` from ``data``; ``source`` (a file name, say) prefixes errors.

    Missing keys take the dataclass defaults; unknown keys are errors with a suggestion.
    """
    if not dataclasses.is_dataclass(cls):
        raise TypeError(f"{cls!r} is not a dataclass")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    for key in data:
        if key not in fields:
            raise ConfigError(f"{source}: unknown key '{key}'{suggest(str(key), fields)}")
    kwargs = {
        name: _convert(data[name], hints[name], f"{source}: {name}")
        for name in fields
        if name in data
    }
    try:
        return cls(**kwargs)
    except TypeError as exc:
        raise ConfigError(f"{source}: {exc}") from exc


def to_mapping(config: Any) -> dict[str, Any]:
    """Dataclass -> plain dict of YAML-friendly values (tuples become lists)."""

    def plain(value: Any) -> Any:
        if isinstance(value, (list, tuple)):
            return [plain(v) for v in value]
        if isinstance(value, dict):
            return {k: plain(v) for k, v in value.items()}
        return value

    return plain(dataclasses.asdict(config))


def parse_override(text: str) -> tuple[list[str], Any]:
    """``"a.b=0.5"`` -> (``["a", "b"]``, ``0.5``); the value is parsed as a YAML scalar/list."""
    if "=" not in text:
        raise ConfigError(f"override '{text}' is not of the form key=value")
    key, raw = text.split("=", 1)
    if not key or any(not part for part in key.split(".")):
        raise ConfigError(f"override '{text}' has an empty key")
    try:
        value = yaml.safe_load(raw) if raw else ""
    except yaml.YAMLError:
        value = raw
    return key.split("."), value


def apply_overrides(
    data: dict[str, Any], overrides: Iterable[str], schema: type | None = None
) -> dict[str, Any]:
    """Return a copy of ``data`` with ``key=value`` overrides applied.

    With ``schema`` (a dataclass), each dotted key is checked against it first so that a typo
    fails with a suggestion even when the key is absent from ``data``.
    """
    out = _deep_copy(data)
    for text in overrides:
        path, value = parse_override(text)
        if schema is not None:
            _check_path(schema, path, text)
        node = out
        for part in path[:-1]:
            child = node.get(part)
            if not isinstance(child, dict):
                child = {}
                node[part] = child
            node = child
        node[path[-1]] = value
    return out


def _check_path(schema: type, path: list[str], text: str) -> None:
    hint: Any = schema
    for depth, part in enumerate(path):
        if not dataclasses.is_dataclass(hint):
            if typing.get_origin(hint) is dict or hint is dict:
                return  # free-form mapping below this point
            dotted = ".".join(path[:depth])
            raise ConfigError(f"override '{text}': '{dotted}' has no sub-keys")
        hints = typing.get_type_hints(hint)
        names = [f.name for f in dataclasses.fields(hint) if f.init]
        if part not in names:
            raise ConfigError(f"override '{text}': unknown key '{part}'{suggest(part, names)}")
        hint = hints[part]
        if typing.get_origin(hint) in (typing.Union, types.UnionType):
            non_none = [a for a in typing.get_args(hint) if a is not type(None)]
            hint = non_none[0] if len(non_none) == 1 else Any


def _deep_copy(data: Mapping[str, Any]) -> dict[str, Any]:
    return {k: _deep_copy(v) if isinstance(v, Mapping) else v for k, v in data.items()}
