"""Raw-socket helpers for the edge tests (tests/test_edge_*.py)."""

from __future__ import annotations

import socket
import textwrap
from collections.abc import Callable
from typing import Any

from helpers import Gateway

CLIENT_KEY = "ck-edge"
ADMIN_KEY = "adm-edge"


def edge_config(upstream_url: str, server_extra: str = "") -> str:
    """A gateway in front of ``upstream_url`` with small client-side deadlines."""
    extra = textwrap.indent(textwrap.dedent(server_extra).strip(), "  ") if server_extra else ""
    return (
        textwrap.dedent(f"""
        server:
          api_keys: [{CLIENT_KEY}]
          admin_api_key: {ADMIN_KEY}
          timeouts: {{headers: 0.2, body: 0.2, body_total: 1.0, send: 0.2, keep_alive: 0.2}}
        """)
        + extra
        + textwrap.dedent(f"""
        providers:
          - id: openai
            base_url: {upstream_url}
            keys: [{{id: k1, secret: sk-1}}]
        model_aliases:
          gpt-4: openai:gpt-4
        """)
    )


def connect(gw: Gateway, timeout: float = 10.0) -> socket.socket:
    sock = socket.create_connection((gw.server.host, gw.server.port), timeout=timeout)
    return sock


def read_all(sock: socket.socket) -> bytes:
    """Everything until the server closes (a test timeout of the socket's own, generous)."""
    out = []
    while True:
        try:
            data = sock.recv(65536)
        except ConnectionResetError:
            break
        if not data:
            break
        out.append(data)
    return b"".join(out)


def status_of(data: bytes) -> int:
    assert data.startswith(b"HTTP/1.1 "), data[:200]
    return int(data[9:12])


def make_gateway(factory: Callable[..., Gateway], upstream: Any, server_extra: str = "") -> Gateway:
    return factory(edge_config(upstream.url, server_extra))
