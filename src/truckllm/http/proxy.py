"""Forward proxies for upstream calls, as operators behind corporate proxies set them:
``HTTPS_PROXY`` (a CONNECT tunnel, TLS to the upstream inside it), ``HTTP_PROXY`` (the request
sent to the proxy in absolute form), ``ALL_PROXY`` for both, and ``NO_PROXY`` (host names, domain
suffixes, IP addresses and CIDR ranges, each with an optional port; ``*`` for every host).
Lower-case names win over upper-case ones, as in curl and urllib. Read once, at start.

Loopback upstreams (``localhost``, ``127.0.0.0/8``, ``::1``) are always reached directly, as Go's
``net/http`` does: a local model server (Ollama, vLLM) must not start going through a corporate
proxy because the environment names one for the internet."""

from __future__ import annotations

import asyncio
import base64
import ipaddress
import os
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

__all__ = ["Proxy", "ProxyEnv", "ProxyError", "open_tunnel"]

_MAX_CONNECT_HEAD = 16 * 1024


class ProxyError(OSError):
    """The proxy refused the tunnel or answered with something other than HTTP."""


@dataclass(frozen=True, slots=True)
class Proxy:
    """An ``http://`` proxy: where to connect, and the ``Proxy-Authorization`` line (or b"")."""

    host: str
    port: int
    auth: bytes = b""

    @classmethod
    def parse(cls, url: str) -> Proxy:
        if "://" not in url:
            url = "http://" + url  # curl's reading of a bare host:port
        parts = urlsplit(url)
        if parts.scheme.lower() != "http" or not parts.hostname:
            raise ValueError(f"not an http:// proxy URL: {url!r}")
        auth = b""
        if parts.username is not None:
            user_pass = f"{unquote(parts.username)}:{unquote(parts.password or '')}"
            token = base64.b64encode(user_pass.encode()).decode()
            auth = f"Proxy-Authorization: Basic {token}\r\n".encode()
        return cls(parts.hostname, parts.port or 80, auth)


@dataclass(frozen=True, slots=True)
class ProxyEnv:
    """The proxies the environment names, and the hosts reached without one."""

    http: Proxy | None = None
    https: Proxy | None = None
    no_proxy: tuple[str, ...] = ()

    @classmethod
    def from_environ(cls, env: Mapping[str, str]) -> ProxyEnv:
        """Raises :class:`ValueError` for a proxy URL that is not ``http://``."""

        def var(name: str) -> str:
            return (env.get(name.lower()) or env.get(name.upper()) or "").strip()

        every = var("all_proxy")
        http, https = var("http_proxy") or every, var("https_proxy") or every
        no_proxy = tuple(e.strip().lower() for e in var("no_proxy").split(",") if e.strip())
        return cls(
            Proxy.parse(http) if http else None, Proxy.parse(https) if https else None, no_proxy
        )

    @classmethod
    def from_process(cls) -> ProxyEnv:
        """This process's environment; none at all where it names a proxy the client cannot use
        (the gateway logs that at start)."""
        try:
            return cls.from_environ(os.environ)
        except ValueError:
            return cls()

    def choose(self, option: str | None, scheme: str, host: str, port: int) -> Proxy | None:
        """A caller's ``proxy`` option for ``scheme://host:port``: absent, the environment's
        choice; "none", direct; else that proxy's URL (:class:`ValueError` if it is not one)."""
        option = (option or "").strip()
        if not option:
            return self.select(scheme, host, port)
        if option.lower() == "none":
            return None
        return Proxy.parse(option)

    def select(self, scheme: str, host: str, port: int) -> Proxy | None:
        """The proxy for ``scheme://host:port``, or None to connect directly."""
        proxy = self.https if scheme == "https" else self.http
        if proxy is None or _loopback(host) or self.bypassed(host, port):
            return None
        return proxy

    def bypassed(self, host: str, port: int) -> bool:
        host = host.lower().strip("[]").rstrip(".")
        try:
            address: ipaddress.IPv4Address | ipaddress.IPv6Address | None = ipaddress.ip_address(
                host
            )
        except ValueError:
            address = None
        for entry in self.no_proxy:
            if entry == "*":
                return True
            name, entry_port = _split_port(entry)
            if entry_port is not None and entry_port != port:
                continue
            if address is not None:
                try:
                    if address in ipaddress.ip_network(name, strict=False):
                        return True
                except ValueError:
                    pass
                continue
            name = name.lstrip("*").lstrip(".")
            if name and (host == name or host.endswith("." + name)):
                return True
        return False


def _loopback(host: str) -> bool:
    host = host.lower().strip("[]").rstrip(".")
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _split_port(entry: str) -> tuple[str, int | None]:
    """``host:port``, ``[v6]:port``, a bare IPv6 address or CIDR, or a name alone."""
    if entry.startswith("["):
        name, _, rest = entry[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else ""
        return name, int(port) if port.isdigit() else None
    if entry.count(":") == 1:
        name, _, port = entry.partition(":")
        if port.isdigit():
            return name, int(port)
    return entry, None


class _Tunnel(asyncio.Protocol):
    """Reads the proxy's answer to CONNECT; nothing else ever reaches it."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.head = b""
        self.answered: asyncio.Future[bytes] = loop.create_future()

    def data_received(self, data: bytes) -> None:
        self.head += data
        if self.answered.done():
            return
        end = self.head.find(b"\r\n\r\n")
        if end >= 0:
            if end + 4 != len(self.head):  # the upstream cannot speak before our ClientHello
                self.answered.set_exception(ProxyError("the proxy sent bytes after its answer"))
            else:
                self.answered.set_result(self.head[:end])
        elif len(self.head) > _MAX_CONNECT_HEAD:
            self.answered.set_exception(ProxyError("the proxy's answer to CONNECT is too large"))

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.answered.done():
            self.answered.set_exception(ProxyError("the proxy closed the connection"))


async def open_tunnel(
    loop: asyncio.AbstractEventLoop, proxy: Proxy, host: str, port: int
) -> asyncio.Transport:
    """A connection to ``proxy`` that relays to ``host:port`` (CONNECT answered 2xx). The caller
    starts TLS on it; on any failure it is closed."""
    transport, tunnel = await loop.create_connection(lambda: _Tunnel(loop), proxy.host, proxy.port)
    try:
        name = host if ":" in host else host.encode("idna").decode("ascii")
        authority = f"[{name}]:{port}" if ":" in name else f"{name}:{port}"
        transport.write(
            f"CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n".encode("ascii")
            + proxy.auth
            + b"\r\n"
        )
        head = await tunnel.answered
        status_line = head.split(b"\r\n", 1)[0].split(b" ", 2)
        if len(status_line) < 2 or not status_line[0].startswith(b"HTTP/1."):
            raise ProxyError("the proxy's answer to CONNECT is not HTTP")
        if not status_line[1].startswith(b"2") or len(status_line[1]) != 3:
            shown = b" ".join(status_line[1:]).decode("latin-1", "replace")[:100]
            raise ProxyError(f"the proxy refused CONNECT {authority}: {shown}")
    except BaseException:
        transport.abort()
        raise
    return transport
