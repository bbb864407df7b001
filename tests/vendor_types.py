"""Strict checks of JSON against the vendors' own published types (the ``anthropic``,
``google-genai`` and ``openai`` packages), for tests/test_vendor_types.py.

The SDKs' types are lenient on purpose: request types are ``TypedDict``s (pydantic ignores keys a
``TypedDict`` does not define, and validates ``Iterable`` fields lazily, that is not at all), and
the Anthropic and OpenAI response models accept unknown fields (``extra="allow"``). A key the
vendor never defined is exactly what a misreading of the API produces, so:

- :func:`typed_dict_problems` walks a value along a ``TypedDict`` type itself: unknown and
  missing keys, ``Literal`` values, unions (the member with the fewest problems is reported),
  lists for ``Iterable``/``Sequence`` fields, JSON scalar types;
- :func:`model_problems` validates JSON with pydantic in strict mode, then walks the result for
  fields a model kept as extras. (google-genai's models forbid extras themselves.)

Each returns a list of problems, ``path: what``; empty means the value fits.
"""

from __future__ import annotations

import collections.abc
import datetime
import enum
import types
import typing
from typing import Any

import orjson
import pydantic
import typing_extensions
from pydantic import BaseModel, TypeAdapter

_SEQUENCES = {
    list,
    tuple,
    collections.abc.Iterable,
    collections.abc.Sequence,
    collections.abc.Collection,
}
_MAPPINGS = {dict, collections.abc.Mapping, collections.abc.MutableMapping}


def typed_dict_problems(value: Any, tp: Any, path: str = "$") -> list[str]:
    """Where ``value`` (decoded JSON) departs from the ``TypedDict`` (or union, list...) ``tp``."""
    origin = typing_extensions.get_origin(tp)
    args = typing_extensions.get_args(tp)
    if tp is Any or tp is object:
        return []
    if origin is typing.Annotated:
        return typed_dict_problems(value, args[0], path)
    if origin in (typing_extensions.Required, typing_extensions.NotRequired):
        return typed_dict_problems(value, args[0], path)
    if origin is typing.Union or origin is types.UnionType:
        # Report the member that fits best: one whose kind matches (no problem at ``path``
        # itself), then the fewest problems.
        best: tuple[bool, int] | None = None
        reported: list[str] = []
        for member in args:
            found = typed_dict_problems(value, member, path)
            if not found:
                return []
            rank = (any(p.startswith(f"{path}: ") for p in found), len(found))
            if best is None or rank < best:
                best, reported = rank, found
        return reported
    if origin is typing.Literal or origin is typing_extensions.Literal:
        ok = any(value == a and type(value) is type(a) for a in args)
        return [] if ok else [f"{path}: {value!r} is not one of {args}"]
    if tp is type(None) or tp is None:
        return [] if value is None else [f"{path}: expected null, got {value!r}"]
    if origin in _SEQUENCES or getattr(origin, "__name__", "") == "SequenceNotStr":
        if not isinstance(value, list):
            return [f"{path}: expected an array, got {type(value).__name__}"]
        item = args[0] if args else Any
        return [
            p for i, v in enumerate(value) for p in typed_dict_problems(v, item, f"{path}[{i}]")
        ]
    if origin in _MAPPINGS or tp in _MAPPINGS:
        if not isinstance(value, dict):
            return [f"{path}: expected an object, got {type(value).__name__}"]
        item = args[1] if len(args) == 2 else Any
        return [p for k, v in value.items() for p in typed_dict_problems(v, item, f"{path}.{k}")]
    if typing_extensions.is_typeddict(tp):
        return _typed_dict(value, tp, path)
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        return model_problems(orjson.dumps(value), tp, path)
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        ok = value in {m.value for m in tp}
        return [] if ok else [f"{path}: {value!r} is not a {tp.__name__}"]
    if tp is bool:
        return [] if isinstance(value, bool) else [f"{path}: expected a boolean, got {value!r}"]
    if tp is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
        return [] if ok else [f"{path}: expected an integer, got {value!r}"]
    if tp is float:
        ok = isinstance(value, int | float) and not isinstance(value, bool)
        return [] if ok else [f"{path}: expected a number, got {value!r}"]
    if tp is str:
        return [] if isinstance(value, str) else [f"{path}: expected a string, got {value!r}"]
    if tp in (datetime.datetime, datetime.date):
        return [] if isinstance(value, str) else [f"{path}: expected a date string"]
    if isinstance(tp, type) and not isinstance(value, tp):
        return [f"{path}: expected {tp.__name__}, got {type(value).__name__}"]
    return []


def _typed_dict(value: Any, tp: Any, path: str) -> list[str]:
    if not isinstance(value, dict):
        return [f"{path}: expected a {tp.__name__} object, got {type(value).__name__}"]
    hints = typing_extensions.get_type_hints(tp, include_extras=True)
    wire = {_wire_name(name, hint): name for name, hint in hints.items()}
    problems = [f"{path}.{key}: not a field of {tp.__name__}" for key in value if key not in wire]
    problems += [
        f"{path}: {tp.__name__} requires {_wire_name(name, hint)!r}"
        for name, hint in hints.items()
        if _required(tp, name, hint) and _wire_name(name, hint) not in value
    ]
    for key, v in value.items():
        if key in wire:
            problems += typed_dict_problems(v, hints[wire[key]], f"{path}.{key}")
    return problems


def _required(tp: Any, name: str, hint: Any) -> bool:
    """Whether a ``TypedDict`` key is required. ``__required_keys__`` alone is not enough: on
    Python 3.11 it misses ``Required[...]`` written as a string (``from __future__ import
    annotations``, as the SDKs do), so the annotation itself is looked at too."""
    origin = typing_extensions.get_origin(hint)
    if origin is typing_extensions.Required:
        return True
    if origin is typing_extensions.NotRequired:
        return False
    return name in tp.__required_keys__


def _wire_name(name: str, hint: Any) -> str:
    """The key on the wire: the SDKs spell a differing one as ``PropertyInfo(alias=...)``."""
    for meta in getattr(hint, "__metadata__", ()):
        alias = getattr(meta, "alias", None)
        if isinstance(alias, str):
            return alias
    return name


def model_problems(raw: bytes, tp: Any, path: str = "$", round_trip: bool = False) -> list[str]:
    """Where the JSON text ``raw`` departs from the pydantic model (or union of models) ``tp``:
    pydantic's own strict validation, then every field a model kept as an unknown extra.

    ``round_trip`` also wants the model to write back exactly ``raw`` (by alias, only what was
    set): that catches what validation quietly normalises, such as google-genai's
    case-insensitive enums and the snake_case names its ``populate_by_name`` accepts beside
    the camelCase ones."""
    adapter = TypeAdapter(tp)
    try:
        obj = adapter.validate_json(raw, strict=True)
    except pydantic.ValidationError as exc:
        return [
            f"{path}{''.join(f'.{p}' for p in e['loc'])}: {e['msg']}"
            for e in exc.errors(include_url=False)
        ]
    problems = _extras(obj, path)
    if round_trip and not problems:
        back = adapter.dump_python(obj, mode="json", by_alias=True, exclude_unset=True)
        problems += _differences(orjson.loads(raw), back, path)
    return problems


def _differences(sent: Any, back: Any, path: str) -> list[str]:
    if isinstance(sent, dict) and isinstance(back, dict):
        return [
            p
            for key in sorted(set(sent) | set(back))
            for p in _differences(
                sent.get(key, "<absent>"), back.get(key, "<absent>"), f"{path}.{key}"
            )
        ]
    if isinstance(sent, list) and isinstance(back, list) and len(sent) == len(back):
        return [
            p
            for i, (a, b) in enumerate(zip(sent, back, strict=True))
            for p in _differences(a, b, f"{path}[{i}]")
        ]
    if sent == back and type(sent) is type(back):
        return []
    return [f"{path}: sent {sent!r}, the type writes {back!r}"]


def _extras(obj: Any, path: str) -> list[str]:
    if isinstance(obj, BaseModel):
        problems = [
            f"{path}.{key}: not a field of {type(obj).__name__}" for key in obj.model_extra or {}
        ]
        for name in type(obj).model_fields:
            problems += _extras(getattr(obj, name), f"{path}.{name}")
        return problems
    if isinstance(obj, list | tuple):
        return [p for i, v in enumerate(obj) for p in _extras(v, f"{path}[{i}]")]
    if isinstance(obj, dict):
        return [p for k, v in obj.items() for p in _extras(v, f"{path}.{k}")]
    return []


def sse(body: bytes) -> list[tuple[str | None, bytes]]:
    """The events of a server-sent event stream, as ``(event name, data)``; LF or CRLF lines."""
    out = []
    for block in body.replace(b"\r\n", b"\n").split(b"\n\n"):
        name: str | None = None
        data: list[bytes] = []
        for line in block.split(b"\n"):
            if line.startswith(b"event:"):
                name = line[6:].strip().decode()
            elif line.startswith(b"data:"):
                data.append(line[5:].removeprefix(b" "))
        if data:
            out.append((name, b"\n".join(data)))
    return out
