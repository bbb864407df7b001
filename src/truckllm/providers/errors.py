"""OpenAI-shaped error bodies, shared by the API layer and the provider adapters."""

from __future__ import annotations

import contextlib
import email.utils
import math
import time
from typing import Any

import orjson

from truckllm.providers.called import call_text


def error_type_for(status: int) -> str:
    if status == 401:
        return "authentication_error"
    if status == 403:
        return "permission_error"
    if status == 404:
        return "not_found_error"
    if status == 429:
        return "rate_limit_error"
    if status >= 500:
        return "server_error"
    return "invalid_request_error"


def error_body(
    message: str,
    status: int,
    code: str | None = None,
    param: str | None = None,
    type_: str | None = None,
) -> bytes:
    return orjson.dumps(
        {
            "error": {
                "message": message,
                "type": type_ or error_type_for(status),
                "param": param,
                "code": code,
            }
        }
    )


def normalise_upstream_error(
    data: bytes, status: int, provider_id: str
) -> tuple[bytes, str | None]:
    """An upstream error body as an OpenAI-shaped body, and its ``code``.

    A body that already is OpenAI-shaped passes through byte for byte; anything else (plain text,
    HTML from a proxy, ``{"detail": ...}``, ``{"error": "text"}``) is wrapped with its text.
    """
    obj: Any = None
    with contextlib.suppress(orjson.JSONDecodeError):
        obj = orjson.loads(data)
    if isinstance(obj, dict):
        err = obj.get("error")
        if isinstance(err, dict) and isinstance(err.get("message"), str):
            code = err.get("code")
            return data, code if isinstance(code, str) else None
        for field in ("error", "message", "detail"):
            text = obj.get(field)
            if isinstance(text, str) and text:
                return error_body(text, status), None
    text = data.decode("utf-8", "replace").strip()[:500] or "(empty body)"
    where = call_text()
    answered = f"answered {status} for {where}" if where else f"answered {status}"
    return error_body(f"provider {provider_id!r} {answered}: {text}", status), None


MAX_ADVICE_S = 7 * 86400.0  # a wait an upstream advises beyond this is not believed


def advised_seconds(value: float) -> float | None:
    """``value`` as a wait an upstream advises: ``None`` (unknown) unless finite, not negative
    and at most :data:`MAX_ADVICE_S`, so nothing downstream (``math.ceil``, ``int``, timers)
    sees ``inf``, ``nan`` or a wait of centuries."""
    if math.isfinite(value) and 0.0 <= value <= MAX_ADVICE_S:
        return value
    return None


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds from a ``Retry-After`` header: delta-seconds or an HTTP date; ``None`` if absent,
    unreadable, negative, not finite (``1e400``, ``nan``) or absurdly far. A date in the past
    is 0."""
    if not value:
        return None
    value = value.strip()
    try:
        return advised_seconds(float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
        stamp = when.timestamp()
    except (TypeError, ValueError, OverflowError, OSError, IndexError):
        return None
    current = time.time() if now is None else now
    return advised_seconds(max(stamp - current, 0.0))
