"""Typed, validated configuration built once from ``params.yaml``.

Every component owns a frozen dataclass with its defaults. ``from_dict`` builds one from a
params section and reports *every* problem at once (unknown keys, wrong types, out-of-range
values) as a :class:`ConfigError` naming the dotted key and the fix, before any compute.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
import types
import typing
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import yaml

from rnngen.errors import UserError

T = TypeVar("T")


class ConfigError(UserError, ValueError):
    """One or more invalid parameters; the message lists each with its key and a fix."""

    def __init__(self, problems: Iterable[str], source: str = "params.yaml") -> None:
        self.problems = list(problems)
        lines = "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(f"invalid parameters in {source}:\n{lines}")


class ParamsLoader(yaml.SafeLoader):
    """PyYAML's safe loader with YAML 1.2's floats: ``1e-4`` is a number, as DVC (ruamel.yaml)
    reads it, not the string YAML 1.1 makes of a float without a dot."""


ParamsLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(\.[0-9]+|[0-9]+(\.[0-9]*)?)[eE][-+]?[0-9]+$"),
    list("-+.0123456789"))


def load_yaml(text: str) -> Any:
    """One YAML document or value, read as params.yaml is (:class:`ParamsLoader`)."""
    return yaml.load(text, Loader=ParamsLoader)  # safe: a SafeLoader subclass


def load_params(path: str | Path = "params.yaml") -> dict[str, Any]:
    """Read ``params.yaml``; a missing or malformed file is a :class:`ConfigError`."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError([f"{path} not found; run from the project root"], str(path))
    try:
        params = load_yaml(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError([f"not valid YAML: {exc}"], str(path)) from exc
    if not isinstance(params, dict):
        raise ConfigError(["top level must be a mapping of sections"], str(path))
    return params


def set_dotted(params: dict[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """Return a deep copy of ``params`` with ``{"a.b.c": v}`` overrides applied."""
    import copy

    out = copy.deepcopy(params)
    for key, value in overrides.items():
        node = out
        *parents, leaf = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return out


def section(cls: type[T], params: Mapping[str, Any], name: str) -> T:
    """Build ``cls`` from ``params[name]`` (the section of that name in params.yaml)."""
    return from_dict(cls, params.get(name), name)


def build_sections(**builders: Any) -> dict[str, Any]:
    """``{name: builder()}`` for zero-argument section builders; one ConfigError lists every problem
    of every builder, so a user fixes all sections in one go."""
    problems: list[str] = []
    out: dict[str, Any] = {}
    for name, build in builders.items():
        try:
            out[name] = build()
        except ConfigError as exc:
            problems.extend(exc.problems)
    if problems:
        raise ConfigError(problems)
    return out


def _check_type(value: Any, annotation: Any) -> bool:
    origin = typing.get_origin(annotation)
    if origin is typing.Literal:
        return value in typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        return any(_check_type(value, a) for a in typing.get_args(annotation))
    if annotation is type(None):
        return value is None
    if annotation is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if annotation is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if origin in (tuple, list):
        return isinstance(value, (list, tuple))
    if origin is dict:
        return isinstance(value, dict)
    if isinstance(annotation, type):
        return isinstance(value, annotation)
    return True


def _describe(annotation: Any) -> str:
    if typing.get_origin(annotation) is typing.Literal:
        return " | ".join(str(a) for a in typing.get_args(annotation))
    return getattr(annotation, "__name__", str(annotation))


def from_dict(cls: type[T], data: Mapping[str, Any] | None, prefix: str) -> T:
    """Build dataclass ``cls`` from ``data``; raise one ConfigError listing every problem.

    Nested dataclass fields are built recursively. After construction the instance's
    ``problems()`` method (when defined) adds range checks.
    """
    problems: list[str] = []
    obj = _build(cls, data or {}, prefix, problems)
    if problems:
        raise ConfigError(problems)
    return obj  # type: ignore[return-value]


def _build(cls: type, data: Mapping[str, Any], prefix: str, problems: list[str]) -> Any:
    if not isinstance(data, Mapping):
        problems.append(f"{prefix}: expected a mapping, got {data!r}")
        return None
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for key in data:
        if key not in fields:
            close = difflib.get_close_matches(str(key), fields, n=1)
            hint = f"; did you mean '{prefix}.{close[0]}'?" if close else ""
            problems.append(f"{prefix}.{key}: unknown key{hint} (known: {', '.join(fields)})")
    kwargs: dict[str, Any] = {}
    for name in fields:
        if name not in data:
            continue
        value, annotation = data[name], hints[name]
        if dataclasses.is_dataclass(annotation):
            kwargs[name] = _build(annotation, value or {}, f"{prefix}.{name}", problems)
        elif not _check_type(value, annotation):
            problems.append(f"{prefix}.{name}: expected {_describe(annotation)}, got {value!r}")
        else:
            kwargs[name] = float(value) if annotation is float else value
    if any(p.startswith(f"{prefix}.") for p in problems):
        return None
    obj = cls(**kwargs)
    check = getattr(obj, "problems", None)
    if check is not None:
        problems.extend(f"{prefix}.{p}" for p in check())
    return obj


def under_minimum(obj: Any, **minimums: float) -> list[str]:
    """Range problems for ``problems()``: ``under_minimum(self, epochs=1, grad_clip=0)`` reports each
    field under its minimum; a minimum of 0 is explained as "0 = off"."""
    out = []
    for key, minimum in minimums.items():
        value = getattr(obj, key)
        if value < minimum:
            note = " (0 = off)" if minimum == 0 else ""
            out.append(f"{key}: must be >= {minimum}{note}, got {value}")
    return out


def to_flat_dict(obj: Any, prefix: str = "") -> dict[str, Any]:
    """Flatten a (nested) dataclass into ``{"a.b": value}`` for logging."""
    out: dict[str, Any] = {}
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        key = f"{prefix}{f.name}"
        if dataclasses.is_dataclass(value):
            out.update(to_flat_dict(value, key + "."))
        else:
            out[key] = value
    return out
