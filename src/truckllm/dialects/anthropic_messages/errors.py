"""Anthropic's error shape: ``{"type": "error", "error": {"type": ..., "message": ...}}``, with the
error types of the Messages API by HTTP status (as its documentation lists them and the
``anthropic`` SDK's ``ErrorResponse`` types them)."""

from __future__ import annotations

from typing import Any

import orjson

_BY_STATUS = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    504: "timeout_error",
    529: "overloaded_error",
}


def error_type_for(status: int) -> str:
    if status in _BY_STATUS:
        return _BY_STATUS[status]
    return "api_error" if status >= 500 else "invalid_request_error"


def error_object(message: str, status: int, request_id: str | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {
        "type": "error",
        "error": {"type": error_type_for(status), "message": message},
    }
    if request_id is not None:
        out["request_id"] = request_id
    return out


def error_body(message: str, status: int, request_id: str | None = None) -> bytes:
    return orjson.dumps(error_object(message, status, request_id))


def from_openai_error(body: bytes, status: int, request_id: str | None = None) -> bytes:
    """An OpenAI-shaped error body (``{"error": {"message": ...}}``) in Anthropic's shape."""
    message = ""
    try:
        obj = orjson.loads(body)
    except orjson.JSONDecodeError:
        obj = None
    if isinstance(obj, dict) and isinstance(obj.get("error"), dict):
        message = str(obj["error"].get("message") or "")
    if not message:
        message = body.decode("utf-8", "replace")[:2000] or f"upstream answered {status}"
    return error_body(message, status, request_id)
