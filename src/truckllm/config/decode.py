"""A strict decoder from parsed YAML to the typed configuration tree: unknown keys, wrong types
and missing required keys are problems that name their key path; every problem is collected.

Strings produced by ${VAR} expansion (:class:`Expanded`) may be coerced to numbers and booleans.
"""

from __future__ import annotations

import dataclasses
import re
import types
from typing import Any, Literal, TypeVar, Union, get_args, get_origin, get_type_hints

from truckllm.config.secret import Secret

T = TypeVar("T")


class Expanded(str):
    """A string produced by ${VAR} expansion: may be coerced to a number or a boolean.
    ``names`` are the variables it came from, for error messages."""

    names: tuple[str, ...]

    def __new__(cls, value: str, names: tuple[str, ...] = ()) -> Expanded:
        self = super().__new__(cls, value)
        self.names = names
        return self


# A variable whose name says it holds a credential: its value is never shown in an error.
_SECRET_NAME = re.compile(r"KEY|SECRET|TOKEN|PASS|CREDENTIAL|AUTH", re.IGNORECASE)


def got(value: Any, secret: bool = False) -> str:
    """The value an error says it got: what it is, and for a value from ${VAR} expansion the
    value itself and the variables, unless it is (or may be) a secret."""
    if not isinstance(value, Expanded) or not value.names:
        return repr(str(value)) if isinstance(value, str) and not secret else describe(value)
    names = ", ".join(f"${{{n}}}" for n in value.names)
    if secret or any(_SECRET_NAME.search(n) for n in value.names):
        return f"a string (from {names}; not shown: it may be a secret)"
    return f"{str(value)!r} (from {names})"


def _holds_secret(tp: Any) -> bool:
    return tp is Secret or any(_holds_secret(a) for a in get_args(tp))


# Strict typed decode


def join_path(path: str, key: object) -> str:
    """The key path of ``key`` under ``path``, as errors name it (``providers[0].keys``)."""
    return f"{path}.{key}" if path else str(key)


def describe(value: Any) -> str:
    """What a YAML value is, for error messages ("a string", "an array")."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    return type(value).__name__


def _type_name(tp: Any) -> str:
    if tp is str or tp is Secret:
        return "a string"
    if tp is bool:
        return "a boolean"
    if tp is int:
        return "an integer"
    if tp is float:
        return "a number"
    if tp is type(None):
        return "null"
    origin = get_origin(tp)
    if origin in (tuple, list):
        return "a list"
    if origin is dict or dataclasses.is_dataclass(tp):
        return "a mapping"
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in get_args(tp))
    if origin in (Union, types.UnionType):
        return " or ".join(_type_name(a) for a in get_args(tp))
    return str(tp)


class Decoder:
    """Strict typed decode of YAML values into the schema's dataclasses: unknown keys, wrong
    types and missing required keys are collected in ``problems``, each with its key path."""

    def __init__(self) -> None:
        self.problems: list[str] = []
        self._hints: dict[type, dict[str, Any]] = {}

    def fail(self, path: str, message: str) -> None:
        self.problems.append(f"{path or '<top level>'}: {message}")

    def wrong(self, path: str, tp: Any, value: Any) -> None:
        shown = got(value, _holds_secret(tp)) if isinstance(value, Expanded) else describe(value)
        self.fail(path, f"expected {_type_name(tp)}, got {shown}")

    def decode(self, value: Any, tp: Any, path: str) -> Any:
        origin = get_origin(tp)
        if tp is Any:
            return value
        if origin in (Union, types.UnionType):
            return self._union(value, get_args(tp), path, tp)
        if dataclasses.is_dataclass(tp) and isinstance(tp, type):
            return self._dataclass(value, tp, path)
        if origin is Literal:
            if value not in get_args(tp):
                self.wrong(path, tp, value) if not isinstance(value, str) else self.fail(
                    path, f"expected {_type_name(tp)}, got {got(value)}"
                )
            return value
        if origin is tuple or origin is list:
            if not isinstance(value, list):
                self.wrong(path, tp, value)
                return ()
            (item_tp, *_) = get_args(tp)
            items = [self.decode(v, item_tp, f"{path}[{i}]") for i, v in enumerate(value)]
            return tuple(items) if origin is tuple else items
        if origin is dict:
            if not isinstance(value, dict):
                self.wrong(path, tp, value)
                return {}
            _, val_tp = get_args(tp)
            out = {}
            for k, v in value.items():
                if not isinstance(k, str):
                    self.fail(join_path(path, k), "keys must be strings")
                    continue
                out[k] = self.decode(v, val_tp, join_path(path, k))
            return out
        return self._scalar(value, tp, path)

    def _scalar(self, value: Any, tp: Any, path: str) -> Any:
        expanded = isinstance(value, Expanded)
        if tp is str:
            if isinstance(value, str):
                return str(value)
        elif tp is Secret:
            if isinstance(value, str):
                return Secret(str(value))
        elif tp is bool:
            if isinstance(value, bool):
                return value
            if expanded and value.lower() in ("true", "false"):
                return value.lower() == "true"
        elif tp is int:
            if isinstance(value, int) and not isinstance(value, bool):
                return value
            if expanded:
                try:
                    return int(value)
                except ValueError:
                    pass
        elif tp is float:
            if isinstance(value, int | float) and not isinstance(value, bool):
                return float(value)
            if expanded:
                try:
                    return float(value)
                except ValueError:
                    pass
        elif tp is type(None):
            if value is None:
                return None
        else:  # pragma: no cover - a schema bug, not a user error
            raise TypeError(f"unsupported config type {tp!r}")
        self.wrong(path, tp, value)
        return None

    def _union(self, value: Any, members: tuple[Any, ...], path: str, tp: Any) -> Any:
        if value is None:
            if type(None) in members:
                return None
            self.wrong(path, tp, value)
            return None
        if isinstance(value, dict):
            tagged, builtin = self._tagged_member(value, members)
            if tagged is not None:
                before = len(self.problems)
                result = self.decode(value, tagged, path)
                if len(self.problems) > before and builtin and "type" in value:
                    self.fail(
                        join_path(path, "type"),
                        f"{value['type']!r} is not one of {', '.join(builtin)}; "
                        "other (plugin) types take their settings under 'options'",
                    )
                return result
        # Choose the member by the value's shape, then decode strictly with it.
        for member in members:
            origin = get_origin(member)
            if isinstance(value, dict) and (dataclasses.is_dataclass(member) or origin is dict):
                return self.decode(value, member, path)
            if isinstance(value, list) and origin in (tuple, list):
                return self.decode(value, member, path)
        for member in members:
            if member is type(None) or get_origin(member) in (tuple, list, dict):
                continue
            if dataclasses.is_dataclass(member):
                continue
            trial = Decoder()
            result = trial.decode(value, member, path)
            if not trial.problems:
                return result
        self.wrong(path, tp, value)
        return None

    def _tagged_member(
        self, value: dict[Any, Any], members: tuple[Any, ...]
    ) -> tuple[Any, tuple[str, ...]]:
        """For a union of dataclasses told apart by a ``type: Literal[...]`` field (sinks): the
        member whose literal names ``value["type"]``, else the member whose ``type`` is any
        ``str`` (plugins), with the literal names when it is that fallback. ``None`` when the
        union is not tagged."""
        fallback: Any = None
        builtin: list[str] = []
        for member in members:
            if not (dataclasses.is_dataclass(member) and isinstance(member, type)):
                continue
            hints = self._hints.get(member)
            if hints is None:
                hints = self._hints[member] = get_type_hints(member)
            tag = hints.get("type")
            if get_origin(tag) is Literal:
                if value.get("type") in get_args(tag):
                    return member, ()
                builtin.extend(get_args(tag))
            elif tag is str:
                fallback = member
        return (fallback, tuple(builtin)) if builtin else (None, ())

    def _dataclass(self, value: Any, cls: type[T], path: str) -> T | None:
        if not isinstance(value, dict):
            self.wrong(path, cls, value)
            return None
        hints = self._hints.get(cls)
        if hints is None:
            hints = self._hints[cls] = get_type_hints(cls)
        fields = {
            f.name: f
            for f in dataclasses.fields(cls)  # type: ignore[arg-type]
            if not f.metadata.get("internal")
        }
        kwargs: dict[str, Any] = {}
        for key, raw in value.items():
            if key not in fields:
                known = ", ".join(sorted(fields))
                self.fail(join_path(path, key), f"unknown key (allowed here: {known})")
                continue
            before = len(self.problems)
            decoded = self.decode(raw, hints[key], join_path(path, key))
            if len(self.problems) == before or isinstance(decoded, tuple | list | dict):
                kwargs[key] = (
                    decoded  # a field that failed keeps its default; its error is recorded
                )
            elif (
                fields[key].default is dataclasses.MISSING
                and fields[key].default_factory is dataclasses.MISSING
            ):
                return None
        for name, f in fields.items():
            if (
                name not in kwargs
                and f.default is dataclasses.MISSING
                and f.default_factory is dataclasses.MISSING
            ):
                self.fail(join_path(path, name), "is required")
                return None
        try:
            return cls(**kwargs)
        except TypeError:  # a field failed to decode into None where a value is needed
            return None
