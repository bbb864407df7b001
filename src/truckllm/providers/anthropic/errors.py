"""Anthropic errors as OpenAI-shaped errors.

An Anthropic error body is ``{"type": "error", "error": {"type", "message"}, "request_id"}``.
The client gets ``{"error": {"message", "type", "param", "code"}}`` with the upstream's status
(529 stays 529: a retryable server error for the routing layer), OpenAI's ``type`` for that
status, and a ``code`` the routing layer and SDK users can act on.
"""

from __future__ import annotations

import contextlib
from typing import Any

import orjson

from truckllm.providers.base import UpstreamUnavailable
from truckllm.providers.errors import error_body, error_type_for, normalise_upstream_error

# Anthropic error type -> OpenAI code. Types not listed keep their own name as the code.
_CODES = {
    "rate_limit_error": "rate_limit_exceeded",
    "authentication_error": "invalid_api_key",
    "billing_error": "insufficient_quota",
    "overloaded_error": "overloaded",
}


# Anthropic error type -> the HTTP status it comes with outside a stream.
_STATUS = {
    "invalid_request_error": 400,
    "authentication_error": 401,
    "billing_error": 402,
    "permission_error": 403,
    "not_found_error": 404,
    "request_too_large": 413,
    "rate_limit_error": 429,
    "api_error": 500,
    "timeout_error": 504,
    "overloaded_error": 529,
}


class AnthropicStreamError(UpstreamUnavailable):
    """An ``error`` event in an Anthropic stream. ``code`` is the error's OpenAI code and
    ``upstream_status`` the status that error type has outside a stream."""

    def __init__(self, message: str, error_type: str) -> None:
        status = _STATUS.get(error_type, 500)
        super().__init__(
            message,
            upstream_status=status,
            code=_CODES.get(error_type, error_type),
            error_type=error_type_for(status),
        )
        self.anthropic_type = error_type


def translate_error(data: bytes, status: int, provider_id: str) -> tuple[bytes, str | None]:
    """An upstream error body as an OpenAI-shaped body, and its code.

    Quota problems get the code ``insufficient_quota`` (which takes the key out of service): a
    ``billing_error``, a 429 whose ``details.error_code`` says the spend limit is reached, and a
    400 about the credit balance. A prompt over the context window gets OpenAI's
    ``context_length_exceeded``. Bodies that are not Anthropic errors (a proxy's HTML page, a
    413 from the CDN) are wrapped with their text.
    """
    obj: Any = None
    with contextlib.suppress(orjson.JSONDecodeError):
        obj = orjson.loads(data)
    err = obj.get("error") if isinstance(obj, dict) else None
    if not isinstance(err, dict) or not isinstance(err.get("type"), str):
        return normalise_upstream_error(data, status, provider_id)
    kind: str = err["type"]
    message = err.get("message")
    if not isinstance(message, str) or not message:
        message = f"provider {provider_id!r} answered {status} {kind}"
    code = _CODES.get(kind, kind)
    details = err.get("details")
    if (
        isinstance(details, dict) and details.get("error_code") == "enforced_spend_limit_reached"
    ) or (kind == "invalid_request_error" and "credit balance" in message):
        code = "insufficient_quota"
    elif kind == "invalid_request_error" and "prompt is too long" in message:
        code = "context_length_exceeded"
    return error_body(message, status, code, None, error_type_for(status)), code


def stream_error(event: Any, provider_id: str) -> AnthropicStreamError:
    """The exception for an ``error`` event's payload."""
    err = event.get("error") if isinstance(event, dict) else None
    kind = err.get("type") if isinstance(err, dict) else None
    message = err.get("message") if isinstance(err, dict) else None
    kind = kind if isinstance(kind, str) else "api_error"
    text = message if isinstance(message, str) and message else kind
    return AnthropicStreamError(
        f"provider {provider_id!r} reported {kind} mid-stream: {text}", kind
    )
