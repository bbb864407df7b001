"""The ``webhook`` sink: batches POSTed as a JSON array, retried with backoff, optionally signed.

Each POST carries ``X-TruckLLM-Batch-Id`` (the same on every retry of a batch, so a receiver can
drop a duplicate after a lost answer) and, with ``hmac_secret``, ``X-TruckLLM-Signature:
sha256=<hex HMAC-SHA256 of the exact body>``.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import os
import random

from truckllm import __version__
from truckllm.config.schema import WebhookSinkConfig
from truckllm.http.client import HTTPClient, HTTPClientError, ParsedURL
from truckllm.http.exchange import post_whole
from truckllm.http.proxy import Proxy, ProxyEnv
from truckllm.providers.errors import parse_retry_after
from truckllm.telemetry.record import RequestRecord
from truckllm.telemetry.sinks.base import DeliveryFailed, QueueSink


def sign(secret: bytes, body: bytes) -> str:
    """The signature header's value for ``body``."""
    return "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()


class WebhookSink(QueueSink):
    """One batch in flight at a time, so batches arrive in order. 5xx, 408, 429 and connection
    errors are retried (``Retry-After`` honoured up to ``backoff_max``); after ``max_retries``
    retries, or at once on another 4xx, the batch is dropped and counted."""

    type = "webhook"

    def __init__(self, name: str, config: WebhookSinkConfig) -> None:
        super().__init__(
            name,
            max_queue=config.max_queue,
            batch_size=config.batch_size,
            flush_interval=config.flush_interval,
        )
        self.config = config
        self._secret = config.hmac_secret.reveal().encode() if config.hmac_secret else None
        self._headers = {
            "Content-Type": "application/json",
            "User-Agent": f"truckllm/{__version__}",
            **{k: v.reveal() for k, v in config.headers.items()},
        }
        self._client: HTTPClient | None = None
        self._url = ParsedURL.parse(config.url)  # validated: an http(s) URL
        self._proxy: Proxy | None = None
        self._rng = random.Random()
        self._batch_prefix = os.urandom(6).hex()
        self._batches = 0

    async def open(self) -> None:
        self._client = HTTPClient(keepalive=30.0, proxies=ProxyEnv.from_process())
        # Validated with the configuration: "none" or an http:// URL when set.
        self._proxy = self._client.proxies.choose(self.config.proxy, *self._url.origin)

    async def release(self) -> None:
        if self._client is not None:
            await self._client.close()
            self._client = None

    def backoff(self, retry: int, retry_after: float | None = None) -> float:
        """Seconds before retry number ``retry`` (1, 2, ...): half fixed, half jitter, doubling
        up to ``backoff_max``; at least the receiver's ``Retry-After`` (within the cap)."""
        cap = min(self.config.backoff_max, self.config.backoff_base * 2.0 ** (retry - 1))
        delay = cap / 2 + self._rng.uniform(0, cap / 2)
        if retry_after is not None:
            delay = max(delay, min(retry_after, self.config.backoff_max))
        return delay

    async def deliver(self, batch: list[RequestRecord]) -> None:
        assert self._client is not None
        body = await self.encoder.array(batch)
        self._batches += 1
        headers = {**self._headers, "X-TruckLLM-Batch-Id": f"{self._batch_prefix}-{self._batches}"}
        if self._secret is not None:
            headers["X-TruckLLM-Signature"] = sign(self._secret, body)
        retries = 0
        while True:
            retry_after: float | None = None
            try:
                status, answer_headers, _ = await post_whole(
                    self._client, self._url, headers, body, self.config.timeout, proxy=self._proxy
                )
                if status < 300:
                    return
                detail = f"HTTP {status}"
                retryable = status >= 500 or status in (408, 429)
                if status in (429, 503):
                    retry_after = parse_retry_after(answer_headers.get("retry-after"))
            except (HTTPClientError, OSError, TimeoutError) as exc:
                detail = f"{type(exc).__name__}: {exc}"
                retryable = True
            if not retryable:
                raise DeliveryFailed("rejected", f"{self.config.url}: {detail}")
            if self.config.max_retries is not None and retries >= self.config.max_retries:
                raise DeliveryFailed("delivery_failed", f"{self.config.url}: {detail}")
            retries += 1
            self.note_retry(f"{self.config.url}: {detail}")
            await asyncio.sleep(self.backoff(retries, retry_after))
