"""What an endpoint module provides: routes of handlers over one inbound :class:`Request`.
Adding an endpoint is one module with a ``routes(services)`` function, listed in
:mod:`truckllm.api.endpoints`."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from truckllm.api.asgi import Receive, Scope, Send
from truckllm.errors import APIError
from truckllm.gateway import Runtime
from truckllm.providers.direct import Push


@dataclass(slots=True)
class Request:
    """One inbound HTTP request, with the runtime it is served by from start to end."""

    rt: Runtime
    scope: Scope
    receive: Receive
    send: Send
    id: str
    # The server's plain writer for a started response's next part (``truckllm.push``), when
    # ``send`` is the server's own: a wrapped ``send`` (:func:`with_send`) drops it.
    push: Push | None = None


Handler = Callable[[Request], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class Route:
    """``method path`` -> handler; method ``*`` takes any. With ``prefix``, ``path`` matches every
    path under it. ``name`` labels the requests' records (metrics, logs) when they fail before
    the handler's own record; ``errors`` shapes error bodies in the endpoint's dialect."""

    method: str
    path: str
    handler: Handler
    name: str | None = None
    prefix: bool = False
    errors: Callable[[APIError], bytes] | None = None  # the dialect's error body; None: OpenAI's


@dataclass
class Readiness:
    """What ``/readyz`` reports: draining, and checks of dependencies beside the runtime
    (name -> () -> (ok, reason))."""

    draining: bool = False
    checks: dict[str, Callable[[], tuple[bool, str | None]]] = field(default_factory=dict)

    def problems(self) -> dict[str, str | None]:
        out = {}
        for name, check in self.checks.items():
            ok, reason = check()
            if not ok:
                out[name] = reason
        return out
