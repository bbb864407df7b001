"""Errors in OpenAI's shape: requests this adapter cannot translate, and Gemini's error bodies.

Gemini answers ``{"error": {"code": 429, "message": ..., "status": "RESOURCE_EXHAUSTED",
"details": [{"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "37s"}, ...]}}``
(sometimes wrapped in a one-element array). The client gets ``{"error": {message, type, param,
code}}`` with the same HTTP status, except that a key Gemini calls invalid (a 400 with reason
``API_KEY_INVALID``) becomes a 401, so the routing layer treats it as the key's fault.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any

import orjson

from truckllm.providers.errors import (
    advised_seconds,
    error_body,
    error_type_for,
    normalise_upstream_error,
)

_RETRY_INFO = "type.googleapis.com/google.rpc.RetryInfo"
_ERROR_INFO = "type.googleapis.com/google.rpc.ErrorInfo"
_QUOTA_FAILURE = "type.googleapis.com/google.rpc.QuotaFailure"


class Unsupported(ValueError):
    """The client's request has something Gemini cannot do faithfully. A 400 for the client."""

    def __init__(
        self, message: str, param: str | None = None, code: str = "unsupported_parameter"
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code

    def body(self) -> bytes:
        return error_body(self.message, 400, self.code, self.param, "invalid_request_error")


@dataclass(frozen=True, slots=True)
class Failure:
    """An upstream error as the client will see it. ``retry_after`` is in seconds."""

    status: int
    body: bytes
    code: str | None
    retry_after: float | None


def translate_error(data: bytes, status: int, provider_id: str) -> Failure:
    """An OpenAI-shaped :class:`Failure` for a Gemini error body; a body that is not Gemini's
    shape is wrapped with its text, as the OpenAI adapter does."""
    err = _error_object(data)
    if err is None:
        body, code = normalise_upstream_error(data, status, provider_id)
        return Failure(status, body, code, None)
    message = err.get("message")
    if not isinstance(message, str) or not message:
        message = f"provider {provider_id!r} answered {status}"
    details = [d for d in err.get("details") or () if isinstance(d, dict)]
    grpc_status = err.get("status")
    if not isinstance(grpc_status, str):
        grpc_status = ""
    type_: str | None = None
    if _key_invalid(details, message):
        status, code = 401, "invalid_api_key"
    elif status == 429 or grpc_status == "RESOURCE_EXHAUSTED":
        code = "insufficient_quota" if _daily_quota(details) else "rate_limit_exceeded"
        if code == "insufficient_quota":
            type_ = "insufficient_quota"
    elif grpc_status == "UNAUTHENTICATED":
        code = "invalid_api_key"
    elif "input token count" in message and "exceeds the maximum" in message:
        code = "context_length_exceeded"  # lets an alias's context_fallback take over
    else:
        code = grpc_status.lower() or None
    body = error_body(message, status, code, None, type_ or error_type_for(status))
    return Failure(status, body, code, _retry_delay(details))


def error_message(obj: Any) -> str | None:
    """The text of a Gemini error object found in a stream event, or ``None`` if it is none."""
    err = obj.get("error") if isinstance(obj, dict) else None
    if not isinstance(err, dict):
        return None
    status = err.get("status") or err.get("code") or "error"
    return f"{status}: {err.get('message') or 'no message'}"


def _error_object(data: bytes) -> dict[str, Any] | None:
    obj: Any = None
    with contextlib.suppress(orjson.JSONDecodeError):
        obj = orjson.loads(data)
    if isinstance(obj, list) and len(obj) == 1:
        obj = obj[0]
    err = obj.get("error") if isinstance(obj, dict) else None
    if isinstance(err, dict) and ("status" in err or isinstance(err.get("code"), int)):
        return err
    return None


def _key_invalid(details: list[dict[str, Any]], message: str) -> bool:
    for d in details:
        if d.get("@type") == _ERROR_INFO and d.get("reason") == "API_KEY_INVALID":
            return True
    return message.startswith("API key not valid")


def _daily_quota(details: list[dict[str, Any]]) -> bool:
    """Whether a quota that only resets the next day ran out (``...PerDay...`` quota ids): the
    key is done for today, unlike a per-minute limit that passes in seconds."""
    for d in details:
        if d.get("@type") != _QUOTA_FAILURE:
            continue
        for v in d.get("violations") or ():
            if isinstance(v, dict) and "PerDay" in str(v.get("quotaId", "")):
                return True
    return False


def _retry_delay(details: list[dict[str, Any]]) -> float | None:
    for d in details:
        if d.get("@type") == _RETRY_INFO:
            return parse_duration(d.get("retryDelay"))
    return None


def parse_duration(value: Any) -> float | None:
    """Seconds from a protobuf ``Duration`` in JSON (``"37s"``, ``"1.5s"``) or in its object form
    (``{"seconds": 37, "nanos": 0}``); ``None`` when unreadable. Never negative."""
    try:
        if isinstance(value, str) and value.endswith("s"):
            return advised_seconds(max(float(value[:-1]), 0.0))
        if isinstance(value, dict):
            seconds = float(value.get("seconds") or 0) + float(value.get("nanos") or 0) / 1e9
            return advised_seconds(max(seconds, 0.0))
    except (TypeError, ValueError, OverflowError):
        return None
    return None
