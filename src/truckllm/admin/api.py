"""The admin API's router: authorisation, ``/admin/v1/<pattern>`` matching, JSON answers."""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl

import orjson

from truckllm.admin import dashboard, handlers
from truckllm.admin.handlers import Handler
from truckllm.admin.recent import Recent
from truckllm.admin.stats import Stats
from truckllm.errors import APIError
from truckllm.stores.base import UsageQuery, UsageResult

if TYPE_CHECKING:
    from truckllm.accounting import Accounting
    from truckllm.gateway import Runtime
    from truckllm.reload import Reloader

PREFIX = "/admin/v1/"


@dataclass
class AdminContext:
    """What the admin endpoints may see of the gateway, and nothing more."""

    stats: Stats
    reloader: Reloader | None  # None: not started from a configuration file
    usage: Callable[[UsageQuery], Awaitable[UsageResult]] | None  # None: no ledger
    provider_types: Callable[[], Iterable[str]]
    recent: Recent = field(default_factory=Recent)  # the dashboard's tail and overview
    accounting: Accounting | None = None  # the clients' budgets and spend


class AdminAPI:
    """Routes ``/admin/v1/...``; other packages add endpoints with :meth:`add`."""

    def __init__(self, context: AdminContext) -> None:
        self.context = context
        self._routes: dict[tuple[str, str], Handler] = {}
        for method, pattern, handler in handlers.ROUTES + dashboard.ROUTES:
            self.add(method, pattern, handler)

    @property
    def stats(self) -> Stats:
        return self.context.stats

    def add(self, method: str, pattern: str, handler: Handler) -> None:
        """Serve ``method /admin/v1/<pattern>``; ``*`` matches one path segment, passed on."""
        self._routes[(method, pattern)] = handler

    def _match(self, method: str, path: str) -> tuple[Handler, list[str]] | None:
        parts = path.split("/")
        allowed: set[str] = set()
        for (m, pattern), handler in self._routes.items():
            pp = pattern.split("/")
            if len(pp) != len(parts) or any(
                p != "*" and p != q for p, q in zip(pp, parts, strict=True)
            ):
                continue
            if m == method or (method == "HEAD" and m == "GET"):
                return handler, [q for p, q in zip(pp, parts, strict=True) if p == "*"]
            allowed.add(m)
        if allowed:
            if "GET" in allowed:
                allowed.add("HEAD")
            raise APIError(
                405,
                f"Method {method} is not allowed here.",
                code="method_not_allowed",
                type_="invalid_request_error",
                headers=[(b"allow", ", ".join(sorted(allowed)).encode())],
            )
        return None

    def authorise(self, rt: Runtime, headers: list[tuple[bytes, bytes]]) -> None:
        admin_key = rt.config.server.admin_api_key
        if admin_key is None:
            raise APIError(
                404,
                "The admin API is off: set server.admin_api_key.",
                code="admin_disabled",
                type_="invalid_request_error",
            )
        token = b""
        for name, value in headers:
            if name == b"authorization":
                scheme, _, token = value.partition(b" ")
                if scheme.lower() != b"bearer":
                    token = b""
                break
        expected = hashlib.sha256(admin_key.reveal().encode()).digest()
        if not hmac.compare_digest(hashlib.sha256(token.strip()).digest(), expected):
            raise APIError(
                401,
                "A valid admin key is required.",
                code="invalid_admin_key",
                type_="invalid_request_error",
            )

    def prepare(self, rt: Runtime, scope: Any) -> AdminCall:
        """Authorise the request and find its handler, before any of its body is read: 401, 404
        or 405 cost the client's body nothing."""
        self.authorise(rt, scope["headers"])
        found = self._match(scope["method"], scope["path"][len(PREFIX) :].strip("/"))
        if found is None:
            raise APIError(
                404,
                f"Unknown admin URL: {scope['path']}",
                code="unknown_url",
                type_="invalid_request_error",
            )
        handler, params = found
        query = dict(parse_qsl(scope.get("query_string", b"").decode("latin-1")))
        return AdminCall(self.context, rt, handler, params, query)

    async def handle(self, rt: Runtime, scope: Any, body: bytes) -> tuple[int, bytes]:
        return await self.prepare(rt, scope).run(body)


@dataclass(frozen=True, slots=True)
class AdminCall:
    """An authorised admin request, its handler found; :meth:`run` with the body."""

    context: AdminContext
    rt: Runtime
    handler: Handler
    params: list[str]
    query: dict[str, str]

    async def run(self, body: bytes) -> tuple[int, bytes]:
        status, payload = await self.handler(self.context, self.rt, self.params, self.query, body)
        return status, orjson.dumps(payload, option=orjson.OPT_NON_STR_KEYS)
