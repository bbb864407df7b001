"""The provider seam: what the gateway hands an adapter (:class:`Call`) and gets back (:class:`Reply`).

A provider adapter is pure translation plus HTTP on the shared upstream client. It knows nothing
of routing: it is told which key to use, and it reports what the upstream said. Every reply it
returns speaks OpenAI's wire format, whatever the upstream speaks.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from truckllm.config.schema import KeyConfig, ProviderConfig, Timeouts
from truckllm.http.client import HTTPClient

Endpoint = Literal["chat", "embeddings"]


@dataclass(slots=True)
class Call:
    """One upstream attempt's input. ``body`` is the client's parsed JSON (never mutated);
    ``raw`` its bytes, forwarded as they are when nothing needs rewriting."""

    endpoint: Endpoint
    body: dict[str, Any]
    raw: bytes
    model: str
    stream: bool
    wants_usage: bool
    request_id: str


@dataclass(slots=True)
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0
    reasoning_tokens: int = 0
    estimated: bool = False

    @classmethod
    def from_openai(cls, obj: Any) -> Usage | None:
        """Read an OpenAI ``usage`` object; ``None`` when it is absent or malformed."""
        if not isinstance(obj, dict):
            return None
        try:
            prompt = int(obj.get("prompt_tokens") or obj.get("input_tokens") or 0)
            completion = int(obj.get("completion_tokens") or obj.get("output_tokens") or 0)
            pdet = obj.get("prompt_tokens_details") or {}
            cdet = obj.get("completion_tokens_details") or {}
            cached = int(pdet.get("cached_tokens") or 0) if isinstance(pdet, dict) else 0
            reasoning = int(cdet.get("reasoning_tokens") or 0) if isinstance(cdet, dict) else 0
        except (TypeError, ValueError):
            return None
        return cls(prompt, completion, cached, reasoning)


@dataclass(slots=True, eq=False)
class Reply:
    """An upstream answer, already in OpenAI's format.

    Exactly one of ``body`` (a complete JSON body: a result or an OpenAI-shaped error) and
    ``events`` (complete SSE events, each ending in a blank line, forwarded as they arrive) is set.
    ``usage`` is known for bodies at once and for streams once ``events`` is exhausted.
    ``headers`` are the upstream's own (rate-limit headers are read from them by the routing
    layer); ``error_code`` is the upstream error's code and ``retry_after`` its advice in seconds
    (``Retry-After``, or a body field such as Gemini's ``RetryInfo``), both ``None`` on success.
    The consumer must ``await aclose()`` it, which releases the upstream connection.
    """

    status: int
    content_type: str
    headers: Mapping[str, str]
    body: bytes | None = None
    events: AsyncIterator[bytes] | None = None
    usage: Usage | None = None
    error_code: str | None = None
    retry_after: float | None = None  # seconds, when the upstream said when to come back
    _release: Any = field(default=None, repr=False)

    async def aclose(self) -> None:
        if self.events is not None:
            aclose = getattr(self.events, "aclose", None)
            if aclose is not None:
                await aclose()
        if self._release is not None:
            release, self._release = self._release, None
            release()


class UpstreamError(Exception):
    """The upstream could not be reached, broke off, or reported an error mid-stream. Raised
    ``from`` the underlying error. ``upstream_status`` is the HTTP status of the upstream's own
    error when it named one (a stream's ``error`` event: 429 for a rate limit, 529 when
    overloaded), ``None`` for transport failures; the routing layer learns from it."""

    status = 502
    code = "upstream_error"

    def __init__(
        self,
        message: str,
        *,
        upstream_status: int | None = None,
        code: str | None = None,
        error_type: str = "api_error",
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.upstream_status = upstream_status
        if code is not None:
            self.code = code
        self.error_type = error_type
        self.retry_after = retry_after


class UpstreamUnavailable(UpstreamError):
    code = "upstream_unavailable"


class UpstreamTimeout(UpstreamError):
    status = 504
    code = "upstream_timeout"


class UpstreamProtocolError(UpstreamError):
    code = "upstream_protocol_error"


class RequestRejected(Exception):
    """The adapter refuses the request before sending anything: it asks for something the
    provider's API cannot express (``n > 1`` on Anthropic, embeddings where there are none).
    ``body`` is the OpenAI-shaped error for the client. The gateway gives the key back untouched
    (no health or limit is charged) and tries the route's other providers first."""

    def __init__(self, status: int, body: bytes, code: str | None = None) -> None:
        super().__init__(body.decode("utf-8", "replace"))
        self.status = status
        self.body = body
        self.code = code


@dataclass(frozen=True, slots=True)
class ProviderContext:
    """What a provider adapter is built from."""

    config: ProviderConfig
    client: HTTPClient
    timeouts: Timeouts


class Provider(Protocol):
    """One wire format. Built once per configuration by ``factory(ProviderContext)``."""

    async def send(self, call: Call, key: KeyConfig) -> Reply:
        """Make one upstream attempt with ``key``. Raises :class:`UpstreamError` when the upstream
        cannot be reached or times out before answering; any HTTP status is a :class:`Reply`."""
        ...
