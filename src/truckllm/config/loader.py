"""Load a configuration in steps: YAML -> ${ENV} expansion -> strict typed decode -> validation.

Every problem is collected (not just the first) and names the file and the key path, e.g.
``config.yaml: providers[0].keys[1].secret: expected a string, got a list``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import re
import typing
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml

from truckllm.config.decode import Decoder, Expanded, describe, join_path
from truckllm.config.schema import Config
from truckllm.config.secret import Secret
from truckllm.config.validate import (
    _validate,
    derive_key_id,
    infer_provider_type,
    parse_listen,
    provider_timeouts,
)


class ConfigError(Exception):
    """A configuration could not be loaded. ``problems`` lists every error found, each a line."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


# ---------------------------------------------------------------------------------------------
# YAML


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate mapping keys instead of silently keeping the last one."""


def _construct_mapping(
    loader: yaml.SafeLoader, node: yaml.MappingNode, deep: bool = False
) -> dict[Any, Any]:
    seen: set[Any] = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r}", key_node.start_mark
            )
        seen.add(key)
    return loader.construct_mapping(node, deep=deep)


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


# ---------------------------------------------------------------------------------------------
# ${ENV} expansion

_VAR = re.compile(r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def _expand(value: Any, path: str, env: Mapping[str, str], problems: list[str]) -> Any:
    if isinstance(value, str):
        if "$" not in value:
            return value

        names: list[str] = []

        def sub(m: re.Match[str]) -> str:
            if m.group(0) == "$$":
                return "$"
            name, default = m.group(1), m.group(2)
            names.append(name)
            if name in env:
                return env[name]
            if default is not None:
                return default
            problems.append(f"{path}: environment variable {name} is not set and has no default")
            return ""

        expanded = _VAR.sub(sub, value)
        return Expanded(expanded, tuple(dict.fromkeys(names)))
    if isinstance(value, dict):
        return {k: _expand(v, join_path(path, k), env, problems) for k, v in value.items()}
    if isinstance(value, list):
        return [_expand(v, f"{path}[{i}]", env, problems) for i, v in enumerate(value)]
    return value


def yaml_problem(exc: yaml.YAMLError, text: str, source: str) -> str:
    """A YAML syntax error as ``file:line:column: invalid YAML: what``, then the offending line
    with a caret under the column (PyYAML's own text names ``<unicode string>``, not the file)."""
    mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
    what = getattr(exc, "problem", None) or getattr(exc, "context", None)
    if mark is None or not isinstance(what, str):
        flat = " ".join(str(exc).replace('"<unicode string>"', repr(source)).split())
        return f"{source}: invalid YAML: {flat}"
    context, context_mark = getattr(exc, "context", None), getattr(exc, "context_mark", None)
    if context and context is not what and context_mark is not None:
        what += f" ({context} at line {context_mark.line + 1}, column {context_mark.column + 1})"
    lines = text.splitlines()
    out = f"{source}:{mark.line + 1}:{mark.column + 1}: invalid YAML: {what}"
    if mark.line < len(lines):
        line = lines[mark.line]
        pad = "".join(c if c == "\t" else " " for c in line[: mark.column])
        out += f"\n    {line}\n    {pad}^"
    return out


# ---------------------------------------------------------------------------------------------
# Entry points


def parse_config(
    text: str,
    source: str = "<memory>",
    env: Mapping[str, str] | None = None,
    provider_types: Iterable[str] | None = None,
    sink_types: Iterable[str] | None = None,
) -> Config:
    """Parse and validate YAML text. Raises :class:`ConfigError` listing every problem.

    ``provider_types``/``sink_types`` are the registered type names; sink types default to the
    built-ins and those declared by installed plugins."""
    env = os.environ if env is None else env
    try:
        raw = yaml.load(text, Loader=_StrictLoader)
    except yaml.YAMLError as exc:
        raise ConfigError([yaml_problem(exc, text, source)]) from exc
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError([f"{source}: the top level must be a mapping, got {describe(raw)}"])
    expand_problems: list[str] = []
    expanded = _expand(raw, "", env, expand_problems)
    decoder = Decoder()
    decoder.problems.extend(expand_problems)
    cfg = decoder.decode(expanded, Config, "")
    if cfg is not None:
        cfg = _validate(cfg, decoder, provider_types, sink_types)
    if decoder.problems or cfg is None:
        raise ConfigError([f"{source}: {p}" for p in dict.fromkeys(decoder.problems)])
    return typing.cast(Config, dataclasses.replace(cfg, source=source))


def load_config(
    path: str | Path,
    env: Mapping[str, str] | None = None,
    provider_types: Iterable[str] | None = None,
    sink_types: Iterable[str] | None = None,
) -> Config:
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError([f"{p}: cannot read: {exc.strerror or exc}"]) from exc
    return parse_config(text, str(p), env, provider_types, sink_types)


def client_key_digests(cfg: Config) -> dict[bytes, str]:
    """SHA-256 digest of every client key -> the client's id (derived when not configured)."""
    out: dict[bytes, str] = {}
    for i, entry in enumerate(cfg.server.api_keys):
        if isinstance(entry, Secret):
            digest = hashlib.sha256(entry.reveal().encode()).digest()
            out[digest] = f"client-{digest.hex()[:8]}"
        elif entry.key is not None:
            digest = hashlib.sha256(entry.key.reveal().encode()).digest()
            out[digest] = entry.id or f"client-{digest.hex()[:8]}"
        elif entry.key_sha256 is not None:
            digest = bytes.fromhex(entry.key_sha256)
            out[digest] = entry.id or f"client-{i}"
    return out


__all__: list[str] = [
    "ConfigError",
    "derive_key_id",
    "infer_provider_type",
    "load_config",
    "parse_config",
    "parse_listen",
    "provider_timeouts",
]
