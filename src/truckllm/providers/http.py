"""The HTTP side every provider adapter shares: the one upstream client, header blocks encoded
once per key, parsed URLs cached, timeouts, and transport errors translated into
:class:`UpstreamError` at this boundary (raised ``from`` the client's), so nothing above the
adapters knows the client's exceptions."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

from truckllm import __version__
from truckllm.config.schema import KeyConfig
from truckllm.http.client import HTTPClientError, Response, Target, encode_headers
from truckllm.providers.base import ProviderContext, UpstreamTimeout, UpstreamUnavailable

_TARGET_CACHE_LIMIT = 4096
_TRANSPORT_ERRORS = (HTTPClientError, OSError)

AuthHeaders = Callable[[str], dict[str, str]]  # secret -> the headers that carry it


def bearer(secret: str) -> dict[str, str]:
    return {"Authorization": "Bearer " + secret}


def header(name: str) -> AuthHeaders:
    """The secret as the value of one header (``x-api-key``, ``x-goog-api-key``, Azure's ``api-key``)."""
    return lambda secret: {name: secret}


class UpstreamHTTP:
    """Safe to share between concurrent requests; holds no per-request state."""

    def __init__(
        self, ctx: ProviderContext, auth: AuthHeaders, fixed: dict[str, str] | None = None
    ) -> None:
        self.id = ctx.config.id
        self.client = ctx.client
        self._auth = auth
        self._fixed = {
            "Content-Type": "application/json",
            "User-Agent": f"truckllm/{__version__}",
            **(fixed or {}),
            **ctx.config.headers,
        }
        self._heads: dict[str, bytes] = {}
        self._targets: dict[str, Target] = {}
        self._secrets = [
            k.secret.reveal().encode()
            for k in ctx.config.keys
            if k.secret is not None and k.secret.reveal()
        ]
        t = ctx.timeouts
        self._connect = t.connect
        self._read = t.read
        self._total = t.total

    def headers(self, key: KeyConfig) -> dict[str, str]:
        headers = dict(self._fixed)
        if key.secret is not None and key.secret.reveal():
            headers.update(self._auth(key.secret.reveal()))
        return headers

    def _head(self, key: KeyConfig) -> bytes:
        head = self._heads.get(key.id)
        if head is None:
            head = self._heads[key.id] = encode_headers(self.headers(key))
        return head

    def _target(self, url: str) -> Target:
        target = self._targets.get(url)
        if target is None:
            if len(self._targets) >= _TARGET_CACHE_LIMIT:
                self._targets.clear()
            target = self._targets[url] = Target.parse(url)
        return target

    async def post(self, url: str, data: bytes, key: KeyConfig, stream: bool) -> Response:
        """Status and headers; the body is read with :meth:`read` or iterated (streams)."""
        try:
            return await self.client.post(
                self._target(url),
                self._head(key),
                data,
                connect_timeout=self._connect,
                read_timeout=self._read,
                total=None if stream else self._total,
            )
        except TimeoutError as exc:
            raise UpstreamTimeout(f"provider {self.id!r} did not answer in time") from exc
        except _TRANSPORT_ERRORS as exc:
            raise UpstreamUnavailable(
                f"provider {self.id!r} is unreachable: {type(exc).__name__}"
            ) from exc

    async def read(self, resp: Response) -> bytes:
        """The whole body; the connection goes back to the pool."""
        try:
            return await resp.read()
        except TimeoutError as exc:
            raise UpstreamTimeout(f"provider {self.id!r} stopped sending its response") from exc
        except _TRANSPORT_ERRORS as exc:
            raise UpstreamUnavailable(
                f"provider {self.id!r} broke off its response: {type(exc).__name__}"
            ) from exc

    def scrub(self, data: bytes) -> bytes:
        """``data`` with every one of this provider's secrets replaced, should an upstream echo
        one in an error (any of them: the key used, or another it mentions)."""
        for secret in self._secrets:
            if secret in data:
                data = data.replace(secret, b"********")
        return data

    @contextlib.contextmanager
    def mid_stream(self) -> Iterator[None]:
        """Wrap reading a stream: a stall or a broken connection becomes an UpstreamError."""
        try:
            yield
        except TimeoutError as exc:
            raise UpstreamTimeout(f"provider {self.id!r} stalled mid-stream") from exc
        except _TRANSPORT_ERRORS as exc:
            raise UpstreamUnavailable(
                f"provider {self.id!r} broke off the stream: {type(exc).__name__}"
            ) from exc
