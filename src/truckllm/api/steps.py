"""The steps every inbound API request shares before the gateway runs it: authenticate the
client, read and parse the body, check the fields every proxied endpoint has."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any, Protocol

import orjson

from truckllm.api.asgi import json_type, read_body
from truckllm.api.routes import Request
from truckllm.errors import APIError, invalid_request
from truckllm.gateway import Route, Served
from truckllm.providers.base import Endpoint, Inbound, Usage

# keys that matched, remembered per runtime so a known key is not hashed on every request; only
# keys that matched go in, so unknown keys cannot evict them; past this many it starts over
_KEY_CACHE_SIZE = 1024


def authenticate(req: Request) -> str:
    """The client id for the request's key: ``Authorization: Bearer <key>``, or ``x-api-key:
    <key>`` as Anthropic's clients send it. Keys are looked up by their SHA-256 digest, never
    compared as text, so the time taken reveals nothing about any configured key. A key that
    matched is remembered (in memory, per runtime) and found again by a dict lookup, which
    compares only keys whose randomized hashes collide: no timing on the configured keys."""
    client_keys = req.rt.client_keys
    if not client_keys:
        return "anonymous"
    token = b""
    for name, value in req.scope["headers"]:
        if name == b"authorization":
            scheme, _, bearer = value.partition(b" ")
            if scheme.lower() == b"bearer":
                token = bearer
        elif name == b"x-api-key" and not token:
            token = value
    token = token.strip()
    if not token:
        raise APIError(
            401,
            "You didn't provide an API key. Send it as 'Authorization: Bearer YOUR_KEY' "
            "or 'x-api-key: YOUR_KEY'.",
            code="missing_api_key",
            type_="invalid_request_error",
        )
    cache = req.rt.client_key_cache
    client = cache.get(token)
    if client is not None:
        return client
    client = client_keys.get(hashlib.sha256(token).digest())
    if client is None:
        raise APIError(
            401,
            "Incorrect API key provided.",
            code="invalid_api_key",
            type_="invalid_request_error",
        )
    if len(cache) >= _KEY_CACHE_SIZE:
        cache.clear()
    cache[token] = client
    return client


async def read_json(req: Request) -> tuple[dict[str, Any], bytes]:
    """The body as a JSON object, and its bytes; 413 past ``server.max_body_bytes``."""
    raw = await read_body(req.scope, req.receive, req.rt.config.server.max_body_bytes)
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise invalid_request(
            f"We could not parse the JSON body of your request. ({exc.msg} at position {exc.pos})",
            code="invalid_json",
        ) from None
    if not isinstance(body, dict):
        raise invalid_request("The request body must be a JSON object.", code="invalid_json")
    return body, raw


class StreamOut(Protocol):
    """A stream's translation into a client dialect: internal-form event batches in, the
    dialect's events out; ``finish`` when the upstream stream has ended."""

    def feed(self, batch: bytes) -> bytes: ...

    def finish(self) -> bytes: ...


class Egress(Protocol):
    """How answers in the internal form go back to a client of another dialect."""

    dialect: str

    def whole(self, status: int, body: bytes, usage: Usage | None) -> bytes: ...

    def stream(self) -> StreamOut: ...

    def error_event(self, err: APIError) -> bytes: ...


class Keeper(Protocol):
    """What an endpoint keeps of a served answer (the Responses API's stored responses), told
    before the client has all of it: so a follow-up request that comes as soon as the answer
    is complete finds it, in this process or another."""

    async def whole(self, served: Served, body: bytes) -> None:
        """A whole answer, as the client gets it, before it is sent."""
        ...

    async def stream_started(self, served: Served) -> None:
        """A stream, before its first event is sent (``served.first`` holds it)."""
        ...

    def observe(self, batch: bytes) -> None:
        """Each batch of a stream that is not translated, as it goes out."""
        ...

    async def stream_ended(self, served: Served) -> None:
        """A stream that ended well: before a translated stream's last events are sent."""
        ...


@dataclass(slots=True, eq=False)  # not frozen: a frozen __init__ is a call per field, per request
class Proxied:
    """A request for the gateway to run: who asks, what, and how the answer goes back. With
    ``inbound`` the client speaks another dialect than the internal form: ``body`` and ``raw``
    are then its request as sent, and ``egress`` is that dialect's way back: it translates what
    comes back in the internal form, and shapes the error that ends a broken stream."""

    client: str
    endpoint: Endpoint
    body: dict[str, Any]
    raw: bytes
    model: str
    stream: bool
    wants_usage: bool  # the client asked for the usage chunk of a stream
    inbound: Inbound | None = None
    egress: Egress | None = None
    label: str | None = None  # the endpoint's name in records and metrics, if not ``endpoint``
    session_id: str | None = None
    # more response headers when the answer is translated (what the translation left out)
    translated_headers: tuple[tuple[bytes, bytes], ...] = ()
    keeper: Keeper | None = None
    route: Route | None = None  # where to go, when the endpoint knows better than the model name
    exclude_keys: frozenset[str] = frozenset()  # keys this request must not use


def proxied(client: str, endpoint: Endpoint, body: dict[str, Any], raw: bytes) -> Proxied:
    """Check ``model``, ``stream`` and ``stream_options`` (only chat and completions stream)."""
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise invalid_request(
            "you must provide a model parameter"
            if model is None
            else f"Invalid type for 'model': expected a string, got {json_type(model)}.",
            param="model",
        )
    stream = body.get("stream", False)
    if stream is None:
        stream = False
    if not isinstance(stream, bool):
        raise invalid_request(
            f"Invalid type for 'stream': expected a boolean, got {json_type(stream)}.",
            param="stream",
        )
    opts = body.get("stream_options")
    if opts is not None and not isinstance(opts, dict):
        raise invalid_request(
            f"Invalid type for 'stream_options': expected an object, got {json_type(opts)}.",
            param="stream_options",
        )
    wants_usage = bool(opts.get("include_usage")) if opts else False
    streams = endpoint in ("chat", "completions")
    return Proxied(client, endpoint, body, raw, model, stream and streams, wants_usage)
