"""JSON Schema (as OpenAI clients write it) to the OpenAPI subset Gemini accepts as a ``Schema``.

Gemini's ``responseSchema`` and ``functionDeclarations[].parameters`` take an OpenAPI 3.0 subset
and reject what they do not know. The conversion keeps everything that constrains the answer and
that Gemini can express, and drops the rest:

- kept: ``type`` (upper-cased), ``properties``, ``required`` (only names that exist), ``items``,
  ``enum`` (string enums), ``anyOf`` (also from ``oneOf``), ``nullable``, ``description``,
  ``title``, ``format`` (only the ones Gemini documents per type), numeric, length, item and
  property bounds, ``pattern``, ``propertyOrdering``;
- rewritten: ``$ref`` into ``$defs``/``definitions`` is inlined (recursive schemas are refused,
  Gemini has no references); ``type: [X, "null"]`` and ``anyOf: [X, {type: null}]`` become
  ``nullable``; ``const`` becomes a one-value ``enum``; ``allOf`` is merged;
- dropped: ``additionalProperties``, ``$schema``, ``$id``, ``default``, ``examples``,
  ``patternProperties``, ``prefixItems``, non-string ``enum`` and every other keyword. Dropping
  ``additionalProperties: false`` loosens nothing in practice: Gemini only emits listed properties.
"""

from __future__ import annotations

from typing import Any

from truckllm.providers.gemini.errors import Unsupported

_COPIED = (
    "description",
    "title",
    "minItems",
    "maxItems",
    "minimum",
    "maximum",
    "minLength",
    "maxLength",
    "minProperties",
    "maxProperties",
    "pattern",
    "propertyOrdering",
)
_FORMATS = {
    "STRING": frozenset({"enum", "date-time"}),
    "NUMBER": frozenset({"float", "double"}),
    "INTEGER": frozenset({"int32", "int64"}),
}
_MAX_DEPTH = 40


def to_gemini_schema(schema: Any, param: str) -> dict[str, Any]:
    """The Gemini ``Schema`` for a JSON Schema. Raises :class:`Unsupported` (naming ``param``)
    for a schema Gemini cannot express, such as a recursive one."""
    if not isinstance(schema, dict):
        return {}
    defs: dict[str, Any] = {}
    for key in ("definitions", "$defs"):
        found = schema.get(key)
        if isinstance(found, dict):
            defs.update(found)
    return _convert(schema, defs, param, 0)


def _convert(schema: Any, defs: dict[str, Any], param: str, depth: int) -> dict[str, Any]:
    if depth > _MAX_DEPTH:
        raise Unsupported(
            "The JSON schema is recursive or nested too deeply for Gemini, which supports "
            "neither $ref nor recursion.",
            param=param,
            code="invalid_schema",
        )
    if not isinstance(schema, dict):
        return {}
    ref = schema.get("$ref")
    if isinstance(ref, str):
        target = _resolve(ref, defs, param)
        siblings = {k: v for k, v in schema.items() if k != "$ref"}
        schema = {**target, **siblings}
    out: dict[str, Any] = {}
    for key in _COPIED:
        if key in schema:
            out[key] = schema[key]
    if schema.get("nullable") is True:
        out["nullable"] = True

    type_ = schema.get("type")
    if isinstance(type_, list):
        kinds = [t for t in type_ if isinstance(t, str) and t != "null"]
        if len(kinds) < len(type_):
            out["nullable"] = True
        if len(kinds) == 1:
            out["type"] = kinds[0].upper()
        elif kinds:
            out["anyOf"] = [{"type": t.upper()} for t in kinds]
    elif isinstance(type_, str):
        out["type"] = type_.upper()

    variants = schema.get("anyOf", schema.get("oneOf"))
    if isinstance(variants, list):
        converted = []
        for v in variants:
            if isinstance(v, dict) and v.get("type") == "null":
                out["nullable"] = True
            else:
                converted.append(_convert(v, defs, param, depth + 1))
        if len(converted) == 1:
            out = {**converted[0], **out}
        elif converted:
            out["anyOf"] = converted
    every = schema.get("allOf")
    if isinstance(every, list):
        for part in every:
            _merge(out, _convert(part, defs, param, depth + 1))

    if "const" in schema and isinstance(schema["const"], str):
        out["enum"] = [schema["const"]]
        out.setdefault("type", "STRING")
    enum = schema.get("enum")
    if isinstance(enum, list) and enum and all(isinstance(v, str) for v in enum):
        out["enum"] = enum
        out.setdefault("type", "STRING")

    props = schema.get("properties")
    if isinstance(props, dict):
        out["properties"] = {
            name: _convert(sub, defs, param, depth + 1) for name, sub in props.items()
        }
        out.setdefault("type", "OBJECT")
        required = schema.get("required")
        if isinstance(required, list):
            names = [r for r in required if isinstance(r, str) and r in props]
            if names:
                out["required"] = names
    items = schema.get("items")
    if isinstance(items, dict):
        out["items"] = _convert(items, defs, param, depth + 1)
        out.setdefault("type", "ARRAY")

    fmt = schema.get("format")
    if isinstance(fmt, str) and fmt in _FORMATS.get(out.get("type", ""), ()):
        out["format"] = fmt
    return out


def _resolve(ref: str, defs: dict[str, Any], param: str) -> dict[str, Any]:
    for prefix in ("#/$defs/", "#/definitions/"):
        if ref.startswith(prefix):
            target = defs.get(ref[len(prefix) :])
            if isinstance(target, dict):
                return target
    raise Unsupported(
        f"The JSON schema reference {ref!r} cannot be resolved; only local references into "
        "$defs or definitions are supported for Gemini.",
        param=param,
        code="invalid_schema",
    )


def _merge(into: dict[str, Any], other: dict[str, Any]) -> None:
    for key, value in other.items():
        if key == "properties" and isinstance(into.get(key), dict):
            into[key] = {**into[key], **value}
        elif key == "required" and isinstance(into.get(key), list):
            into[key] = into[key] + [r for r in value if r not in into[key]]
        else:
            into.setdefault(key, value)
