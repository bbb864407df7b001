"""The request-log record format, and a bounded, batching queue that built-in sinks share.

A sink is fed by the record bus on the event loop, so ``submit`` must cost next to nothing: it
appends to a deque (or counts a drop) and at most wakes the sink's writer task. Encoding,
batching and I/O happen in that task, off the request's path.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from typing import Any

import orjson

from truckllm.telemetry.batching import batch_ready
from truckllm.telemetry.record import RequestRecord

log = logging.getLogger("truckllm.telemetry.sinks")

_MAX_TEXT = 256  # client-chosen strings (model names) are cut to this many characters
_ENCODE_CHUNK = 16  # records encoded between two yields to the event loop (~60 µs)


class DeliveryFailed(Exception):
    """A batch could not be delivered and is given up; its records count as dropped for
    ``reason`` (a short, fixed word: it becomes a metric label)."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


# ".000Z" to ".999Z": the millisecond part of a timestamp, looked up rather than formatted
_MILLIS = tuple(f".{ms:03d}Z" for ms in range(1000))


def _ms(seconds: float) -> float:
    """Seconds as milliseconds to the microsecond (``round(seconds * 1000, 3)`` costs a
    decimal conversion; this is integer arithmetic). For the non-negative durations of a
    record."""
    return int(seconds * 1e6 + 0.5) / 1e3


class _Line:
    """One request-log object: its attributes, stored in this order, are the JSON object's keys
    (``__dict__`` is what gets encoded). Instances of a class share one table of attribute
    names, so filling one costs a store per field where a dict display builds and hashes a new
    table for every record: about 5,000 instructions fewer per record (callgrind)."""

    time: str
    request_id: str
    client_id: str | None
    session_id: str | None
    client_ip: str | None
    endpoint: str
    model: str | None
    alias: str | None
    provider: str | None
    key_id: str | None
    upstream_model: str | None
    status: int
    error_code: str | None
    attempts: int
    latency_ms: float
    ttft_ms: float | None
    overhead_ms: float
    tokens: dict[str, int | bool] | None
    cost_usd: float | None
    stream: bool
    cache: str  # only with the response cache on for the endpoint
    saved_usd: float | None


class RecordEncoder:
    """Turns records into request-log objects: one JSON object per request, no bodies.

    Keeps the last formatted second, which the records of a batch share, so it belongs to one
    sink and one thread at a time.
    """

    __slots__ = ("_prefix", "_second")

    def __init__(self) -> None:
        self._second = -1
        self._prefix = ""

    def rfc3339(self, t: float) -> str:
        """UTC with milliseconds: ``2024-05-01T12:00:00.123Z``."""
        second = int(t)
        if second != self._second:
            self._second = second
            self._prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        return self._prefix + _MILLIS[int((t - second) * 1000)]

    def obj(self, r: RequestRecord) -> dict[str, Any]:
        # Once per request: the helpers are inlined where it is cheap (``_ms``, the current
        # second's time prefix), and client-chosen texts cut by a slice (a text no longer than
        # the cut comes back as itself; ``None`` stays ``None``).
        u = r.usage
        ttft = r.ttft_s
        latency = r.latency_s
        own = latency - r.upstream_s
        t = r.time
        second = int(t)
        session, model, error = r.session_id, r.model, r.error_code
        line = _Line()
        line.time = (
            self._prefix + _MILLIS[int((t - second) * 1000)]
            if second == self._second
            else self.rfc3339(t)
        )
        line.request_id = r.request_id
        line.client_id = r.client_id
        line.session_id = session and session[:_MAX_TEXT]
        line.client_ip = r.client_ip
        line.endpoint = r.endpoint[:_MAX_TEXT]
        line.model = model and model[:_MAX_TEXT]
        line.alias = r.alias
        line.provider = r.provider
        line.key_id = r.key_id
        line.upstream_model = r.upstream_model
        line.status = r.status
        line.error_code = error and error[:_MAX_TEXT]
        line.attempts = r.attempts
        line.latency_ms = int(latency * 1e6 + 0.5) / 1e3  # _ms, inlined
        line.ttft_ms = None if ttft is None else int(ttft * 1e6 + 0.5) / 1e3
        line.overhead_ms = int(own * 1e6 + 0.5) / 1e3 if own > 0.0 else 0.0
        line.tokens = (
            None
            if u is None
            else {
                "prompt": u.prompt_tokens,
                "completion": u.completion_tokens,
                "cached": u.cached_tokens,
                "reasoning": u.reasoning_tokens,
                "estimated": u.estimated,
            }
        )
        line.cost_usd = r.cost_usd
        line.stream = r.stream
        if r.cache is not None:  # the response cache is on for the request's endpoint
            line.cache, line.saved_usd = r.cache, r.saved_usd
        return line.__dict__

    async def lines(self, batch: list[RequestRecord]) -> list[bytes]:
        """JSON Lines for a batch, yielding to the event loop between chunks so a large batch
        never holds it for long."""
        out: list[bytes] = []
        dumps, obj = orjson.dumps, self.obj
        for start in range(0, len(batch), _ENCODE_CHUNK):
            if start:
                await asyncio.sleep(0)
            # ``+ b"\n"`` copies each line to a bytes object of its own size: what
            # ``orjson.dumps`` returns keeps the buffer orjson reserved (8 KB for a 400-byte
            # line), and a batch of 1,000 such buffers grew the heap by megabytes that the
            # allocator gave back after every batch, two page faults a record
            # (``bench/features.py``'s log figure; docs/performance.md, the seventh pass)
            out += [dumps(obj(r)) + b"\n" for r in batch[start : start + _ENCODE_CHUNK]]
        return out

    async def array(self, batch: list[RequestRecord]) -> bytes:
        """One JSON array of the batch's objects (a webhook body)."""
        objs: list[dict[str, Any]] = []
        obj = self.obj
        for start in range(0, len(batch), _ENCODE_CHUNK):
            if start:
                await asyncio.sleep(0)
            objs.extend(obj(r) for r in batch[start : start + _ENCODE_CHUNK])
        return orjson.dumps(objs)


class QueueSink:
    """A sink with a bounded in-memory queue drained in batches by one named background task.

    ``submit`` is O(1), never blocks and never raises. At most ``max_queue`` records are held
    (the batch being delivered included); beyond that a record is dropped and counted under
    ``"queue_full"``, so nothing within the bound is ever lost to a slow or failing destination.
    Records leave in the order they came, one batch at a time.

    Subclasses implement :meth:`deliver` (raise :class:`DeliveryFailed` to give a batch up) and
    may override :meth:`open` and :meth:`release` for their resources.
    """

    type = "queue"

    def __init__(
        self, name: str, *, max_queue: int, batch_size: int, flush_interval: float
    ) -> None:
        self.name = name
        self.max_queue = max_queue
        self.batch_size = batch_size
        self.flush_interval = flush_interval
        self.delivered = 0
        self.dropped: dict[str, int] = {}
        self.encoder = RecordEncoder()
        self._queue: deque[RequestRecord] = deque()
        self._in_delivery = 0
        self._wake = asyncio.Event()
        self._closing = False
        self._closed = False
        self._trouble: str | None = None  # "retrying" or "dropping" while the destination fails
        self._task: asyncio.Task[None] | None = None

    @property
    def depth(self) -> int:
        """Records held: queued and being delivered."""
        return len(self._queue) + self._in_delivery

    def submit(self, record: RequestRecord) -> None:
        queue = self._queue
        if len(queue) + self._in_delivery >= self.max_queue or self._closed:
            reason = "shutdown" if self._closed else "queue_full"
            self.dropped[reason] = self.dropped.get(reason, 0) + 1
            return
        queue.append(record)
        n = len(queue)
        if n == 1 or n == self.batch_size:
            self._wake.set()

    async def start(self) -> None:
        if self._task is None:
            await self.open()
            self._task = asyncio.get_running_loop().create_task(
                self._run(), name=f"truckllm-sink-{self.name}"
            )

    async def close(self, grace_s: float) -> None:
        """Deliver what is queued within ``grace_s`` seconds, then stop. Records still held
        then are dropped and counted under ``"shutdown"``."""
        self._closed = True
        self._closing = True
        self._wake.set()
        task = self._task
        if task is not None:
            _, pending = await asyncio.wait({task}, timeout=grace_s)
            if pending:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            self._task = None
        left = self.depth
        if left:
            self._queue.clear()
            self._in_delivery = 0
            self._count_drop("shutdown", left)
            log.warning(
                "request-log sink closed before delivering everything",
                extra={"sink": self.name, "dropped": left},
            )
        try:
            await self.release()
        except Exception:
            log.exception("request-log sink failed to close", extra={"sink": self.name})

    # -- for subclasses -------------------------------------------------------------------------

    async def open(self) -> None:
        """Acquire resources (a session, a file handle) before the first batch."""

    async def release(self) -> None:
        """Release them once the queue is drained (or given up)."""

    async def deliver(self, batch: list[RequestRecord]) -> None:
        raise NotImplementedError

    # -- the writer task ------------------------------------------------------------------------

    def _count_drop(self, reason: str, n: int) -> None:
        self.dropped[reason] = self.dropped.get(reason, 0) + n

    async def _run(self) -> None:
        queue = self._queue

        def full() -> bool:
            return len(queue) >= self.batch_size

        def closing() -> bool:
            return self._closing

        while await batch_ready(queue, self._wake, full, closing, self.flush_interval):
            n = min(len(queue), self.batch_size)
            batch = [queue.popleft() for _ in range(n)]
            self._in_delivery = n
            try:
                await self.deliver(batch)
            except DeliveryFailed as exc:
                self._count_drop(exc.reason, n)
                self._trouble_is("dropping", exc.detail)
            except Exception as exc:  # a bug in a sink must not stop its writer
                self._count_drop("error", n)
                self._trouble_is("dropping", f"{type(exc).__name__}: {exc}")
            else:
                self.delivered += n
                if self._trouble is not None:
                    self._trouble = None
                    log.info("request-log sink recovered", extra={"sink": self.name})
            self._in_delivery = 0  # (still counted when cancelled: close() counts it as dropped)

    def note_retry(self, detail: str) -> None:
        """For sinks that retry a batch: say (once per streak) that the destination fails."""
        self._trouble_is("retrying", detail)

    def _trouble_is(self, what: str, detail: str) -> None:
        """Logged when the sink starts retrying, and when it starts dropping; not per batch."""
        if self._trouble is None or (what == "dropping" and self._trouble == "retrying"):
            self._trouble = what
            log.warning(
                f"request-log sink is failing; records are {'retried' if what == 'retrying' else 'dropped'}",
                extra={"sink": self.name, "error": detail},
            )
