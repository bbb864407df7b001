"""ASGI plumbing for the API layer: message types, reading a bounded body, JSON answers, and the
watch that turns a client's disconnect into cancellation of its request."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from truckllm.errors import APIError, invalid_request
from truckllm.http.server import DISCONNECT_EXTENSION

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


JSON_HEADER = (b"content-type", b"application/json")
SSE_HEADERS = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache"),
    (b"x-accel-buffering", b"no"),
]


class ClientGone(Exception):
    """The client disconnected before the request was read."""


class DisconnectWatch:
    """Cancels the request's task when the client disconnects, so the upstream call is dropped
    too. Under truckllm's own server the server says so (the ``truckllm.disconnect`` scope
    extension: no task, no timer); under any other ASGI server a timer starts a ``receive()``
    watcher for requests that last longer than ``delay``."""

    __slots__ = ("_fut", "_receive", "_timer", "_watch", "gone", "task")

    def __init__(self, scope: Scope, receive: Receive, delay: float = 0.1) -> None:
        task = asyncio.current_task()
        assert task is not None
        self.task = task
        self.gone = False
        self._receive = receive
        self._fut: asyncio.Future[Message] | None = None
        self._timer: asyncio.TimerHandle | None = None
        extensions = scope.get("extensions")
        self._watch: Callable[[Callable[[], None] | None], None] | None = (
            extensions.get(DISCONNECT_EXTENSION) if extensions else None
        )
        if self._watch is not None:
            self._watch(self._gone)
        else:
            self._timer = task.get_loop().call_later(delay, self._start)

    def _gone(self) -> None:
        self.gone = True
        self.task.cancel()

    def _start(self) -> None:
        self._timer = None
        self._fut = asyncio.ensure_future(self._receive())
        self._fut.add_done_callback(self._on_message)

    def _on_message(self, fut: asyncio.Future[Message]) -> None:
        if fut.cancelled() or fut.exception() is not None:
            return
        if fut.result()["type"] == "http.disconnect":
            self._gone()

    def stop(self) -> None:
        if self._watch is not None:
            self._watch(None)
        if self._timer is not None:
            self._timer.cancel()
        if self._fut is not None:
            self._fut.remove_done_callback(self._on_message)
            self._fut.cancel()


def check_length(scope: Scope, limit: int) -> None:
    """413 when the request's ``Content-Length`` says it exceeds ``limit`` bytes."""
    for name, value in scope["headers"]:
        if name == b"content-length":
            try:
                too_big = int(value) > limit
            except ValueError:
                raise invalid_request("Invalid Content-Length header.") from None
            if too_big:
                raise too_large(limit)
            break


async def read_body(scope: Scope, receive: Receive, limit: int) -> bytes:
    """The request body; 413 as soon as it is known to exceed ``limit`` bytes."""
    check_length(scope, limit)
    message = await receive()
    if message["type"] == "http.disconnect":
        raise ClientGone
    raw: bytes = message.get("body", b"")
    if message.get("more_body"):
        parts = [raw]
        size = len(raw)
        while message.get("more_body"):
            message = await receive()
            if message["type"] == "http.disconnect":
                raise ClientGone
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                raise too_large(limit)
            parts.append(chunk)
        raw = b"".join(parts)
    elif len(raw) > limit:
        raise too_large(limit)
    return raw


def too_large(limit: int) -> APIError:
    return APIError(
        413,
        f"Request body is larger than the limit of {limit} bytes.",
        code="request_too_large",
        type_="invalid_request_error",
    )


def json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    return "an object"


async def send_json(
    send: Send,
    status: int,
    body: bytes,
    request_id: str,
    headers: list[tuple[bytes, bytes]] | None = None,
) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                JSON_HEADER,
                (b"content-length", str(len(body)).encode()),
                (b"x-request-id", request_id.encode()),
                *(headers or []),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


async def send_error(send: Send, err: APIError, request_id: str, body: bytes | None = None) -> None:
    """The error answer: ``body`` in the client's dialect, OpenAI's shape by default."""
    # RuntimeError: the response had already started (the server refuses a second start).
    with contextlib.suppress(OSError, RuntimeError):
        await send_json(
            send, err.status, err.body() if body is None else body, request_id, err.headers
        )


def client_ip(scope: Scope) -> str | None:
    """The client's address as the server gives it (behind a trusted proxy, the one its
    X-Forwarded-For names)."""
    client = scope.get("client")
    return client[0] if client else None
