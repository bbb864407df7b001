"""Server-sent events from an upstream: the one framer every provider adapter reads streams with.

Framing follows the WHATWG ``text/event-stream`` rules: a line ends in CRLF, LF or a lone CR; an
event ends at a blank line; a UTF-8 BOM at the start of the stream is dropped.

:class:`SSEFramer` cuts the bytes of each upstream read into complete events and returns them as
they are, with every line end written as LF, so a stream that already uses LF (OpenAI and nearly
every compatible server) comes out byte for byte, mostly without a copy: events are found with
``bytes.find``, never a loop over bytes. The OpenAI passthrough forwards those bytes; the
translating adapters (Anthropic, Gemini) take each event's data from them with :func:`iter_data`
(:func:`iter_events` gives the event type too). Fields are read per the specification: ``data``
lines joined with ``"\n"``, one space after the colon dropped, ``event`` kept, comments (``:``)
and other fields ignored, an event without ``data`` skipped.

An event is handed out as soon as the line end of its blank line arrives, even when that line end
is a CRLF cut between two reads: a read ending in CR completes the line at once, and an LF at the
start of the next read is then swallowed. Only an incomplete event is held back, and at most
``limit`` bytes of it (plus at most one read): an upstream that sends an endless line or event
gets an :class:`~truckllm.providers.base.UpstreamProtocolError` instead of the gateway's memory.

Unlike a browser, :meth:`SSEFramer.close` hands out a last event that the stream ended without a
blank line after: upstreams that end on ``data: [DONE]\\n`` alone exist, and that event counts.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import NamedTuple

from truckllm.providers.base import UpstreamProtocolError

MAX_EVENT_BYTES = 64 * 1024 * 1024
"""The default bound on the bytes of one incomplete event (big enough for an inline image)."""

_BOM = b"\xef\xbb\xbf"


class Event(NamedTuple):
    """One event's type (``"message"`` unless an ``event`` field names one) and its data, the
    ``data`` lines joined with ``"\\n"`` (bytes: JSON parsers take them as they are)."""

    event: str
    data: bytes


class SSEFramer:
    """Cuts one upstream stream into complete events. Not thread-safe: one per stream."""

    __slots__ = ("_head", "_limit", "_pending", "_provider_id", "_size", "_skip_lf", "_tail_lf")

    def __init__(self, provider_id: str, limit: int = MAX_EVENT_BYTES) -> None:
        self._provider_id = provider_id
        self._limit = limit
        self._pending: list[bytes] = []  # an incomplete event (LF line ends), read by read
        self._size = 0  # bytes in _pending
        self._tail_lf = False  # _pending ends with a line end (so a leading LF is a blank line)
        self._skip_lf = False  # the last read ended in CR: an LF first in the next is that CRLF's
        self._head: bytes | None = b""  # the stream's first bytes, until a BOM is ruled out

    def feed(self, data: bytes) -> bytes:
        """The events that ``data`` (one read) completes, each ending in ``"\\n\\n"``; ``b""``
        when it completes none. Raises :class:`UpstreamProtocolError` when the incomplete event
        grows past the limit."""
        if self._head is not None:
            data = self._start(data)
        if self._skip_lf and data:
            self._skip_lf = False
            if data[0] == 10:  # b"\n"
                data = data[1:]
        if b"\r" in data:
            self._skip_lf = data[-1] == 13  # b"\r"
            data = data.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        end = data.rfind(b"\n\n")
        if end >= 0:
            cut = end + 2
            if cut == len(data) and not self._pending:  # the usual read: whole events
                return data
        elif self._tail_lf and data[:1] == b"\n":  # the blank line began in an earlier read
            cut = 1
        else:
            if data:
                self._hold(data)
            return b""
        if self._pending:
            out = b"".join(self._pending) + data[:cut]
            self._pending = []
        else:
            out = data[:cut] if cut < len(data) else data
        if cut < len(data):  # checked against the limit with the next read: these go out first
            rest = data[cut:]
            self._pending.append(rest)
            self._size = len(rest)
            self._tail_lf = rest[-1] == 10
        else:
            self._size = 0
            self._tail_lf = False
        return out

    def close(self) -> bytes:
        """At the end of the stream: the event it left unterminated, given its blank line, or
        ``b""`` when nothing but line ends is left."""
        rest = b"".join(self._pending)
        self._pending = []
        self._size = 0
        self._tail_lf = False
        if not rest.strip():
            return b""
        return rest + (b"\n" if rest[-1] == 10 else b"\n\n")

    def _hold(self, data: bytes) -> None:
        self._pending.append(data)
        self._size += len(data)
        self._tail_lf = data[-1] == 10
        if self._size > self._limit:
            self._pending = []
            self._size = 0
            raise UpstreamProtocolError(
                f"provider {self._provider_id!r} sent a server-sent event over "
                f"{self._limit} bytes without ending it"
            )

    def _start(self, data: bytes) -> bytes:
        """``data`` with a BOM that opens the stream removed (it may arrive split over reads)."""
        head = self._head + data if self._head else data
        if len(head) < 3 and _BOM.startswith(head):
            self._head = head
            return b""
        self._head = None
        return head[3:] if head.startswith(_BOM) else head


def iter_data(block: bytes) -> Iterator[bytes]:
    """The data of each event in ``block`` (complete events, as :meth:`SSEFramer.feed` returns
    them), for streams whose data names its own type, as all three vendors' JSON does. The
    translating adapters' per-event path: no :class:`Event` is built."""
    for raw in block.split(b"\n\n"):
        # Fast paths for the usual shapes: one data line (OpenAI, Gemini); an event line and a
        # data line (Anthropic). Anything else is read line by line.
        if raw.startswith(b"data: "):
            if b"\n" not in raw:
                yield raw[6:]
                continue
        elif raw.startswith(b"event: "):
            nl = raw.find(b"\n")
            if raw.startswith(b"data: ", nl + 1) and raw.find(b"\n", nl + 1) < 0:
                yield raw[nl + 7 :]
                continue
        elif not raw:
            continue
        event = parse_event(raw)
        if event is not None:
            yield event.data


def iter_events(block: bytes) -> Iterator[Event]:
    """The events in ``block`` (complete events, as :meth:`SSEFramer.feed` returns them)."""
    for raw in block.split(b"\n\n"):
        if raw:
            event = parse_event(raw)
            if event is not None:
                yield event


def parse_event(raw: bytes) -> Event | None:
    """One event's fields, from its lines (LF line ends, without the blank line); ``None`` for an
    event without ``data``, which is not dispatched (comments, a lone ``event`` or ``id``)."""
    data: list[bytes] = []
    kind = "message"
    for line in raw.split(b"\n"):
        if not line or line[0] == 58:  # b":", a comment
            continue
        name, colon, value = line.partition(b":")
        if colon and value[:1] == b" ":
            value = value[1:]
        if name == b"data":
            data.append(value)
        elif name == b"event":
            kind = value.decode("utf-8", "replace") or "message"
    if not data:
        return None
    return Event(kind, data[0] if len(data) == 1 else b"\n".join(data))


__all__ = ["MAX_EVENT_BYTES", "Event", "SSEFramer", "iter_data", "iter_events", "parse_event"]
