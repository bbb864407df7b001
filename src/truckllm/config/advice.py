"""Warnings about a valid configuration that cannot work as meant: ``base_url`` forms the
provider's type will call wrongly. Each provider type builds its URLs on ``base_url`` its own way:

- ``openai``: ``{base_url}/chat/completions``, so the base carries the API's version
  (``https://api.openai.com/v1``, ``https://api.groq.com/openai/v1``);
- ``anthropic``: ``{base_url}/v1/messages``, so the base is the host alone
  (``https://api.anthropic.com``);
- ``gemini``: ``{base_url}/v1beta/models/...`` (a base already ending in ``/v1beta``, ``/v1`` or
  ``/v1alpha`` is taken as it is), so the base is the host (``https://generativelanguage.googleapis.com``).

These are warnings, not errors: a gateway behind an unusual proxy may know better.
"""

from __future__ import annotations

import re
from urllib.parse import urlsplit

from truckllm.config.schema import Config, ProviderConfig

_VERSION = re.compile(r"^v\d+[a-z0-9]*$")  # v1, v1beta, v4
_ENDPOINTS = ("/chat/completions", "/completions", "/embeddings", "/responses", "/messages")
# OpenAI-compatible services documented without a version in the base URL.
_VERSIONLESS_HOSTS = frozenset({"api.perplexity.ai", "api.deepseek.com"})
_GEMINI_HOST = "generativelanguage.googleapis.com"


def base_url_warnings(cfg: Config) -> list[str]:
    """One line per provider whose ``base_url`` cannot work for its type, with its key path."""
    out = []
    for i, p in enumerate(cfg.providers):
        problem = base_url_problem(p)
        if problem:
            out.append(f"providers[{i}].base_url: {p.base_url!r} {problem}")
    return out


def base_url_problem(p: ProviderConfig) -> str | None:
    """What is wrong with the provider's ``base_url`` for its type, or ``None``."""
    parts = urlsplit(p.base_url)
    path = parts.path.rstrip("/")
    segments = [s for s in path.split("/") if s]
    origin = f"{parts.scheme}://{parts.netloc}"
    if p.type == "anthropic":
        return _anthropic(path, segments, origin)
    if p.type == "gemini":
        return _gemini(path, segments, origin)
    if p.type == "openai":
        return _openai(path, segments, parts.hostname or "")
    return None  # a plugin type: its own conventions


def _anthropic(path: str, segments: list[str], origin: str) -> str | None:
    if any(_VERSION.match(s) for s in segments):
        return (
            f"includes a version: an anthropic-type provider calls {{base_url}}/v1/messages, so "
            f"this calls {path}/v1/messages; use {origin!r}"
        )
    return None


def _gemini(path: str, segments: list[str], origin: str) -> str | None:
    if "openai" in segments:
        return (
            "is Gemini's OpenAI-compatible endpoint: use it with type: openai, or "
            f"{origin!r} with type: gemini"
        )
    versions = [i for i, s in enumerate(segments) if _VERSION.match(s)]
    if versions and versions[-1] != len(segments) - 1:
        return (
            "has more after its version: a gemini-type provider calls "
            f"{{base_url}}/models/MODEL:generateContent; use {origin!r}"
        )
    return None


def _openai(path: str, segments: list[str], host: str) -> str | None:
    for endpoint in _ENDPOINTS:
        if path.endswith(endpoint):
            return (
                f"ends with the endpoint {endpoint}: an openai-type provider calls "
                f"{{base_url}}{endpoint} itself; give the API's base (up to /v1)"
            )
    if host == _GEMINI_HOST and "openai" not in segments:
        return (
            "is Gemini's native API: use type: gemini, or Gemini's OpenAI-compatible "
            f"endpoint 'https://{_GEMINI_HOST}/v1beta/openai' with type: openai"
        )
    if host in _VERSIONLESS_HOSTS or any(_VERSION.match(s) for s in segments):
        return None
    if "deployments" in segments:  # Azure OpenAI's per-deployment URLs
        return None
    return (
        "has no version in its path: an openai-type provider calls {base_url}/chat/completions, "
        f"so this calls {path or ''}/chat/completions; OpenAI-compatible APIs usually end in /v1 "
        "(https://api.openai.com/v1)"
    )
