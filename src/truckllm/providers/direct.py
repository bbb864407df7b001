"""A passthrough stream's fast path: its events written to the client from the upstream
connection's read callback, with no task woken per read.

A passthrough stream's ``events`` is an async generator: each upstream read wakes the request's
task, which takes the read through the generator's step (``feed``: cut into whole events, usage
noted) and writes it out. :class:`Direct` runs the same ``feed`` on the same state straight from
the read callback (:meth:`~truckllm.http.client.Response.splice`) and hands what it gives to a
plain writer (the server's ``truckllm.push``). It stops when the body ends or fails, ``feed``
raises, or the writer says the client is full; ``events`` then goes on from there, and sees the
end, the error or the next read as it would have. Nothing is read twice or skipped.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable

from truckllm.http.client import Response

Push = Callable[[bytes], bool]  # writes a body part now; False: the client is full or gone
Feed = Callable[[bytes], bytes]  # one upstream read -> the events to send (b"": none yet)


class Direct:
    """The fast path of the stream ``events`` (an async generator that calls ``feed`` on each
    read of ``resp``). Valid only while the reply's ``events`` is still that generator: a
    consumer that wraps it (the response cache's tap) has to see every event."""

    __slots__ = ("_feed", "_resp", "events", "pushed_s", "sent")

    def __init__(self, events: AsyncIterator[bytes], resp: Response, feed: Feed) -> None:
        self.events = events
        self._resp = resp
        self._feed = feed
        # Added up as each relay returns (or is cancelled): events pushed (blank-line ends),
        # and the seconds spent in push (the client's writes, not the upstream's time).
        self.sent = 0
        self.pushed_s = 0.0

    async def relay(self, push: Push) -> None:
        """Send the stream's events by ``push`` as they are read, until it ends, fails, or the
        client is full; then the caller goes on with ``events`` (and may call this again)."""
        feed = self._feed
        clock = time.perf_counter
        sent, pushed_s = 0, 0.0

        def sink(chunk: bytes) -> bool:
            nonlocal sent, pushed_s
            batch = feed(chunk)
            if not batch:
                return True
            sent += batch.count(b"\n\n")
            t = clock()
            more = push(batch)
            pushed_s += clock() - t
            return more

        resp = self._resp
        try:
            await resp.splice(sink)
        finally:
            resp.unsplice()
            self.sent += sent
            self.pushed_s += pushed_s
