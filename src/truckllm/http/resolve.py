"""Upstream host names resolved once per ``ttl``, not once per connection.

The loop resolves a name on every new connection (``getaddrinfo`` in a small thread pool: uvloop
has four threads). A burst of new streams to one provider opens as many connections at once, and
each waited for its own lookup of the same name, queued behind the others': time before the
first event that no benchmark on loopback sees (its upstreams are IP addresses). Here the
addresses of a name are kept for ``ttl`` seconds, and lookups of a name already under way are
joined, not repeated. A connection tries the addresses in the order the system gave them; when
none answers, the name is looked up again on the next connection.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import time
from collections.abc import Callable

DNS_TTL = 30.0  # seconds the addresses of a name are used before it is looked up again

Key = tuple[str, int]


def _is_address(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


class _Abandoned(Exception):
    """The task looking a name up was cancelled: whoever waited on it looks it up itself."""


def _retrieve(fut: asyncio.Future[list[str]]) -> None:
    """Mark a failed lookup's error seen when nobody else waited for it."""
    if not fut.cancelled():
        fut.exception()


class Resolver:
    """Addresses per (host, port), cached for ``ttl`` seconds; concurrent lookups shared."""

    def __init__(self, ttl: float = DNS_TTL, clock: Callable[[], float] = time.monotonic) -> None:
        self.ttl = ttl
        self.clock = clock
        self.lookups = 0  # names looked up (not answered from the cache)
        self._cache: dict[Key, tuple[float, list[str]]] = {}
        self._pending: dict[Key, asyncio.Future[list[str]]] = {}

    async def addresses(self, loop: asyncio.AbstractEventLoop, host: str, port: int) -> list[str]:
        if _is_address(host):
            return [host]
        key = (host, port)
        hit = self._cache.get(key)
        if hit is not None and hit[0] > self.clock():
            return hit[1]
        pending = self._pending.get(key)
        if pending is not None:
            try:
                return await asyncio.shield(pending)
            except _Abandoned:
                return await self.addresses(loop, host, port)
        fut: asyncio.Future[list[str]] = loop.create_future()
        fut.add_done_callback(_retrieve)
        self._pending[key] = fut
        self.lookups += 1
        try:
            infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
            found = list(dict.fromkeys(str(info[4][0]) for info in infos))
            if not found:
                raise OSError(f"no address for {host!r}")
        except Exception as exc:
            fut.set_exception(exc)
            raise
        except BaseException:
            fut.set_exception(_Abandoned())
            raise
        finally:
            del self._pending[key]
        self._cache[key] = (self.clock() + self.ttl, found)
        fut.set_result(found)
        return found

    def forget(self, host: str, port: int) -> None:
        """None of the addresses answered: look the name up again next time."""
        self._cache.pop((host, port), None)
