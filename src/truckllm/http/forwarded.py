"""The client behind a load balancer: ``X-Forwarded-For`` read only from a trusted peer
(``server.trusted_proxies``), walked from the right, skipping trusted hops, as nginx's
``real_ip_recursive`` does. The rightmost address that is not a trusted proxy is the client: any
address left of it was written by the client itself and proves nothing."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

__all__ = ["Networks", "forwarded_client", "parse_networks", "trusted"]

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Networks = tuple[Network, ...]


def parse_networks(cidrs: Iterable[str]) -> Networks:
    """``10.0.0.0/8``, ``::1``, ``192.168.1.7``... Raises :class:`ValueError`."""
    return tuple(ipaddress.ip_network(c.strip(), strict=False) for c in cidrs)


def _address(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    text = text.strip()
    if text.startswith("["):  # [v6]:port
        text = text[1 : text.find("]")] if "]" in text else ""
    elif text.count(":") == 1:  # v4:port
        text = text.partition(":")[0]
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def trusted(host: str, networks: Networks) -> bool:
    address = _address(host)
    return address is not None and any(address in n for n in networks)


def forwarded_client(values: Iterable[bytes], networks: Networks) -> str | None:
    """The client address from the ``X-Forwarded-For`` values (in header order) a trusted peer
    sent; None when there is none usable. Walks right to left over trusted hops; an entry that is
    not an address stops the walk at the last good one."""
    hops = [hop for value in values for hop in value.decode("latin-1").split(",")]
    client: str | None = None
    for hop in reversed(hops):
        address = _address(hop)
        if address is None:
            break
        client = str(address)
        if not any(address in n for n in networks):
            break
    return client
