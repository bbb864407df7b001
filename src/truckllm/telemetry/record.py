"""One record per client request: what metrics, request-log sinks and the usage ledger consume.

The API layer fills a record as the request runs and hands it, once the response is finished,
to every consumer of a :class:`RecordBus`. Consumers run on the event loop and must not block:
they count in memory or enqueue (sinks and stores write in the background).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

from truckllm.providers.base import Usage

log = logging.getLogger("truckllm.telemetry")


@dataclass(slots=True)
class RequestRecord:
    time: float  # wall clock at arrival, unix seconds
    request_id: str
    endpoint: str  # "chat", "embeddings", "messages", "responses", "models", or another path
    client_id: str | None = None
    model: str | None = None  # as the client named it
    alias: str | None = None  # set when ``model`` is an alias
    provider: str | None = None
    key_id: str | None = None
    upstream_model: str | None = None
    stream: bool = False
    status: int = 0
    error_code: str | None = None
    attempts: int = 0
    latency_s: float = 0.0  # arrival to the last byte sent
    ttft_s: float | None = None  # arrival to the first byte of a stream
    upstream_s: float = 0.0  # of which spent waiting on upstreams (all attempts)
    usage: Usage | None = None  # ``usage.estimated`` when a stream ended before its usage came
    cost_usd: float | None = None  # exact: a whole number of nano-dollars (see accounting.money)
    client_tokens: int = 0  # tokens reserved against the client's tpm limit at admission
    session_id: str | None = None  # the client's session (Claude Code's X-Claude-Code-Session-Id)
    # The client's address: the peer's, or X-Forwarded-For's from a server.trusted_proxies peer
    client_ip: str | None = None
    cache: str | None = None  # the response cache: "hit", "miss" or "bypass"; None when off
    saved_usd: float | None = None  # a cache hit: what the upstream call it replaced cost

    @property
    def overhead_s(self) -> float:
        """The gateway's own time: total minus the time spent waiting on upstreams."""
        return max(self.latency_s - self.upstream_s, 0.0)


Consumer = Callable[[RequestRecord], None]


class RecordBus:
    """Hands each finished request's record to every consumer. A consumer that raises is logged
    and does not stop the others, nor the request."""

    def __init__(self) -> None:
        self.consumers: list[Consumer] = []

    def subscribe(self, consumer: Consumer) -> None:
        self.consumers.append(consumer)

    def publish(self, record: RequestRecord) -> None:
        for consumer in self.consumers:
            try:
                consumer(record)
            except Exception:
                log.exception(
                    "request record consumer failed", extra={"request_id": record.request_id}
                )
