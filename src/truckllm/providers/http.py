"""The HTTP side every provider adapter shares: the one aiohttp session, header sets built once
per key, timeouts, and transport errors translated into :class:`UpstreamError` at this boundary
(raised ``from`` aiohttp's), so nothing above the adapters knows aiohttp's exceptions."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import aiohttp

from truckllm import __version__
from truckllm.config.schema import KeyConfig
from truckllm.providers.base import ProviderContext, UpstreamTimeout, UpstreamUnavailable

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
        self.session = ctx.session
        self._auth = auth
        self._fixed = {
            "Content-Type": "application/json",
            "User-Agent": f"truckllm/{__version__}",
            **(fixed or {}),
            **ctx.config.headers,
        }
        self._headers: dict[str, dict[str, str]] = {}
        self._secrets = [
            k.secret.reveal().encode()
            for k in ctx.config.keys
            if k.secret is not None and k.secret.reveal()
        ]
        t = ctx.timeouts
        self.timeout = aiohttp.ClientTimeout(
            total=t.total, sock_connect=t.connect, sock_read=t.read
        )
        self.stream_timeout = aiohttp.ClientTimeout(
            total=None, sock_connect=t.connect, sock_read=t.read
        )

    def headers(self, key: KeyConfig) -> dict[str, str]:
        headers = self._headers.get(key.id)
        if headers is None:
            headers = dict(self._fixed)
            if key.secret is not None and key.secret.reveal():
                headers.update(self._auth(key.secret.reveal()))
            self._headers[key.id] = headers
        return headers

    async def post(
        self, url: str, data: bytes, key: KeyConfig, stream: bool
    ) -> aiohttp.ClientResponse:
        try:
            return await self.session.post(
                url,
                data=data,
                headers=self.headers(key),
                timeout=self.stream_timeout if stream else self.timeout,
            )
        except TimeoutError as exc:
            raise UpstreamTimeout(f"provider {self.id!r} did not answer in time") from exc
        except aiohttp.ClientError as exc:
            raise UpstreamUnavailable(
                f"provider {self.id!r} is unreachable: {type(exc).__name__}"
            ) from exc

    async def read(self, resp: aiohttp.ClientResponse) -> bytes:
        """The whole body; the connection goes back to the pool."""
        try:
            return await resp.read()
        except TimeoutError as exc:
            raise UpstreamTimeout(f"provider {self.id!r} stopped sending its response") from exc
        except aiohttp.ClientError as exc:
            raise UpstreamUnavailable(
                f"provider {self.id!r} broke off its response: {type(exc).__name__}"
            ) from exc
        finally:
            resp.release()

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
        except aiohttp.ClientError as exc:
            raise UpstreamUnavailable(
                f"provider {self.id!r} broke off the stream: {type(exc).__name__}"
            ) from exc
