"""The provider seam: what the gateway hands an adapter (:class:`Call`) and gets back (:class:`Reply`).

A provider adapter is pure translation plus HTTP on the shared upstream client. It knows nothing
of routing: it is told which key to use, and it reports what the upstream said. A call comes in
the internal form (an OpenAI chat or embeddings request) and its reply goes back in it, unless the
client's own dialect is one the adapter speaks natively (``Provider.dialects``): then the call
carries the client's body as it came, and the reply the upstream's answer as it came.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import orjson

from truckllm.config.schema import KeyConfig, ProviderConfig, Timeouts
from truckllm.http.client import HTTPClient
from truckllm.providers.direct import Direct
from truckllm.providers.errors import error_body

Endpoint = Literal[
    "chat",
    "embeddings",
    "count_tokens",
    "completions",
    "moderations",
    "images",
    "speech",
    "transcriptions",
    "translations",
]
"""What a call asks for. ``count_tokens`` exists only in a dialect a provider speaks natively
(Anthropic's ``/v1/messages/count_tokens``); the endpoints in :data:`OPENAI_ONLY` only at
providers that list them in their ``endpoints``."""

OPENAI_ONLY: frozenset[str] = frozenset(
    {"completions", "moderations", "images", "speech", "transcriptions", "translations"}
)
"""OpenAI's other model endpoints: passed through to a provider that declares them in its
``endpoints`` attribute (the ``openai`` type), refused by every other one before sending."""

INTERNAL = "openai-chat"
"""The internal form's dialect: OpenAI's chat completions (and embeddings) wire format."""
ANTHROPIC_MESSAGES = "anthropic-messages"
"""Anthropic's Messages API, as clients such as Claude Code speak it."""
OPENAI_RESPONSES = "openai-responses"
"""OpenAI's Responses API, as Codex CLI and OpenAI's newer SDK helpers speak it."""
OPENAI_MULTIPART = "openai-multipart"
"""OpenAI's ``multipart/form-data`` uploads (audio transcriptions and translations): ``source``
is the form as the client sends it, read while it arrives
(:class:`truckllm.providers.openai.multipart.Form`), ``headers`` its ``content-type``."""


@dataclass(slots=True)
class Call:
    """One upstream attempt's input. ``body`` is the parsed JSON (never mutated); ``raw`` its
    bytes, forwarded as they are when nothing needs rewriting. ``dialect`` says which wire format
    they are in: the internal form, or a client dialect the provider speaks natively (then
    ``headers`` holds the client's headers of that dialect to forward, such as
    ``anthropic-version``)."""

    endpoint: Endpoint
    body: dict[str, Any]
    raw: bytes
    model: str
    stream: bool
    wants_usage: bool
    request_id: str
    dialect: str = INTERNAL
    headers: Mapping[str, str] | None = None
    source: Any = None  # a body not in memory (an upload), in a form the dialect's sender knows


@dataclass(slots=True, eq=False)
class Inbound:
    """A client request in a dialect other than the internal form. It goes to a provider that
    speaks the dialect as it is; to any other, translated once (:meth:`internal`)."""

    dialect: str
    body: dict[str, Any]
    raw: bytes
    headers: Mapping[str, str]  # the dialect's headers, forwarded on passthrough
    translate: Callable[[dict[str, Any]], dict[str, Any]]  # ValueError: cannot be expressed
    dropped: tuple[str, ...] = ()  # what the translation leaves out (built-in tools)
    source: Any = None  # the body when it is not in ``raw`` (an upload read as it arrives)
    _internal: tuple[dict[str, Any], bytes] | None = None

    def internal(self) -> tuple[dict[str, Any], bytes]:
        """The request in the internal form; :class:`RequestRejected` when it has none."""
        if self._internal is None:
            try:
                body = self.translate(self.body)
            except ValueError as exc:
                raise RequestRejected(
                    400,
                    error_body(str(exc), 400, "invalid_request", None, "invalid_request_error"),
                    "invalid_request",
                ) from None
            self._internal = (body, orjson.dumps(body))
        return self._internal


@dataclass(slots=True)
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0  # of the prompt, read from the provider's prompt cache
    reasoning_tokens: int = 0
    estimated: bool = False
    cache_creation_tokens: int = 0  # of the prompt, written to the cache (Anthropic bills apart)
    images: int = 0  # generated (OpenAI's image models)
    seconds: float = 0.0  # of audio transcribed or translated (whisper-1 reports these)
    characters: int = 0  # of speech input (text to speech)

    @classmethod
    def from_openai(cls, obj: Any) -> Usage | None:
        """Read an OpenAI ``usage`` object; ``None`` when it is absent or malformed."""
        if not isinstance(obj, dict):
            return None
        try:
            prompt = int(obj.get("prompt_tokens") or obj.get("input_tokens") or 0)
            completion = int(obj.get("completion_tokens") or obj.get("output_tokens") or 0)
            pdet = obj.get("prompt_tokens_details") or obj.get("input_tokens_details") or {}
            cdet = obj.get("completion_tokens_details") or obj.get("output_tokens_details") or {}
            cached = int(pdet.get("cached_tokens") or 0) if isinstance(pdet, dict) else 0
            reasoning = int(cdet.get("reasoning_tokens") or 0) if isinstance(cdet, dict) else 0
        except (TypeError, ValueError):
            return None
        return cls(prompt, completion, cached, reasoning)


@dataclass(slots=True, eq=False)
class Reply:
    """An upstream answer, in the internal form (OpenAI's format) unless ``dialect`` names the
    client dialect it came in natively.

    Exactly one of ``body`` (a complete JSON body: a result or an OpenAI-shaped error) and
    ``events`` (complete SSE events, each ending in a blank line, forwarded as they arrive) is set.
    ``usage`` is known for bodies at once and for streams once ``events`` is exhausted.
    A large body relayed as it came (passthrough) may come in two parts: ``body`` its beginning
    and ``rest`` the remainder, read from the upstream as the client takes it (so it is never
    held whole); its ``usage`` is known once ``rest`` is exhausted.
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
    rest: AsyncIterator[bytes] | None = None
    usage: Usage | None = None
    model: str | None = None  # the upstream's own name for the model, where usage is read
    error_code: str | None = None
    retry_after: float | None = None  # seconds, when the upstream said when to come back
    dialect: str = INTERNAL
    # The fast path of a passthrough ``events``, valid while ``events`` is still its generator.
    direct: Direct | None = None
    _release: Any = field(default=None, repr=False)

    async def aclose(self) -> None:
        self.direct = None  # it names this reply (its feed reads usage into it): no cycle left
        for parts in (self.events, self.rest):
            aclose = getattr(parts, "aclose", None)
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
    """One wire format. Built once per configuration by ``factory(ProviderContext)``. An adapter
    may declare ``dialects``, a frozenset of client dialects it takes as they are."""

    async def send(self, call: Call, key: KeyConfig) -> Reply:
        """Make one upstream attempt with ``key``. Raises :class:`UpstreamError` when the upstream
        cannot be reached or times out before answering; any HTTP status is a :class:`Reply`."""
        ...
