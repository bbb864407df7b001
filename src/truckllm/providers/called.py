"""Which upstream URL an attempt called, for the operator's log and the client's error message.

:class:`~truckllm.providers.http.UpstreamHTTP` notes every call's method and URL in a context
variable; the gateway reads it after the provider's ``send`` returned or raised (the same task:
the note travels with the request, never between requests), and error texts built inside an
adapter read it too. Shown, a URL loses its query (keys and signatures may travel there) and any
user information."""

from __future__ import annotations

from contextvars import ContextVar
from urllib.parse import urlsplit

_CALLED: ContextVar[tuple[str, str] | None] = ContextVar("truckllm_upstream_call", default=None)


def note_call(method: str, url: str) -> None:
    _CALLED.set((method, url))


def forget_call() -> None:
    """Before an attempt: a note left by an earlier one must not be taken for this one's."""
    _CALLED.set(None)


def called() -> tuple[str, str] | None:
    """``(method, url)`` of the last upstream call in this context, the URL as it was called."""
    return _CALLED.get()


def shown_url(url: str) -> str:
    """``url`` without its query, fragment and user information: safe for logs and errors."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{host}{port}{parts.path}"


def shown_path(url: str) -> str:
    """The path of ``url`` alone (what a client is told), without the query."""
    return urlsplit(url).path or "/"


def call_text(path_only: bool = True) -> str:
    """``"POST /v1/chat/completions"`` for the last call in this context ('' when none)."""
    note = _CALLED.get()
    if note is None:
        return ""
    method, url = note
    return f"{method} {shown_path(url) if path_only else shown_url(url)}"
