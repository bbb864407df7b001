"""The garbage-collection policy of a serving process: short young collections on a timer, a
full one rarely.

Reference counting frees everything the gateway's request, stream and connection paths make:
they leave no reference cycles (``gc.DEBUG_SAVEALL`` after thousands of requests and streams,
and a test that fails on any). What a collection does there is walk live objects and find
nothing, and a walk's pause grows with the objects it walks. With 1,000 streams open the heap
holds about 100,000 tracked objects (a stream's futures, coroutines and buffers, about 100 each),
and a full walk of them paused the gateway 70-90 ms (``bench/streaming.py``, the gateway's
collections timed with ``gc.callbacks``): the time to first token of every stream starting then,
and the gap of every stream open then, took all of it.

So a collection never walks the whole heap while serving, except rarely:

- **Young** (:meth:`Collector._tick`): the young and middle generations are collected together
  (``gc.collect(1)``) on a timer. That walks only the objects made since the last one and still
  alive; what survives (a stream's objects, alive until it ends) moves to the old generation and
  is not walked again. The timer adapts so that a young collection pauses about ``pause``
  seconds: the interval halves (down to ``min_interval``) after a longer one and doubles (up to
  ``max_young_interval``) after a much shorter one, and never so short that more than 5% of the
  time goes to young collections (a busy server's requests in flight are walked however often
  it looks). So 1,000 streams starting in a second are walked in pieces of a millisecond or
  two, and an idle process wakes ten times a second (a collection that finds nothing to walk
  takes microseconds).
  (``gc.get_count()[0]`` cannot say how many young objects wait: it counts allocations less
  deallocations, and old objects freed by reference counting, a finished stream's, take it
  down while new streams' objects pile up.)
- **Full**: at least every ``max_interval`` seconds, and when the old generation holds more than
  ``old_slack`` objects beyond what the last full collection left (looked at every
  ``old_check`` seconds). Garbage that reaches the old generation (a reference cycle made by a
  library or an error path, whose objects outlived a young collection) waits for it: bounded in
  time by ``max_interval`` and in size by ``old_slack``.

Python's own collections by allocation count are off while this runs. Process-wide: used by the
foreground server, each worker and ``truckllm mock``, never by embedded or test servers.
"""

from __future__ import annotations

import asyncio
import gc
import time

YOUNG_MIN_INTERVAL = 0.01  # young collections at most this often
YOUNG_MAX_INTERVAL = 0.1  # and at least this often
YOUNG_SHARE = 0.05  # of the time, at most, spent in young collections
YOUNG_PAUSE = 0.002  # the pause a young collection aims at, in seconds
OLD_CHECK_INTERVAL = 10.0  # how often the old generation's size is looked at
OLD_SLACK = 1_000_000  # old objects beyond the last full collection's that trigger another
FULL_MAX_INTERVAL = 600.0  # a full collection at least this often


class Collector:
    """Young collections on an adaptive timer; a full one every ``max_interval`` or when the
    old generation grew by ``old_slack``. ``young_collections`` and ``full_collections`` count
    what it ran; ``interval`` is the young timer's current period."""

    def __init__(
        self,
        min_interval: float = YOUNG_MIN_INTERVAL,
        max_young_interval: float = YOUNG_MAX_INTERVAL,
        pause: float = YOUNG_PAUSE,
        share: float = YOUNG_SHARE,
        old_check: float = OLD_CHECK_INTERVAL,
        old_slack: int = OLD_SLACK,
        max_interval: float = FULL_MAX_INTERVAL,
    ) -> None:
        self.min_interval = min_interval
        self.max_young_interval = max_young_interval
        self.interval = max_young_interval
        self.pause = pause
        self.share = share
        self.old_check = old_check
        self.old_slack = old_slack
        self.max_interval = max_interval
        self.young_collections = 0
        self.full_collections = 0
        self._old_after_full = 0  # the old generation's size after the last full collection
        self._last_full = 0.0
        self._last_check = 0.0
        self._was_enabled: bool | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def start(self) -> None:
        self._loop = loop = asyncio.get_running_loop()
        self._was_enabled = gc.isenabled()
        gc.disable()  # no collections by allocation count; _tick decides
        self._last_full = self._last_check = loop.time()
        self._old_after_full = len(gc.get_objects(2))
        self._timer = loop.call_later(self.interval, self._tick)

    def _tick(self) -> None:
        loop = self._loop
        assert loop is not None
        now = loop.time()
        if now - self._last_full >= self.max_interval or self._old_grew(now):
            self.full()
        else:
            self._young()
        self._timer = loop.call_later(self.interval, self._tick)

    def _young(self) -> None:
        t0 = time.perf_counter()
        gc.collect(1)
        took = time.perf_counter() - t0
        self.young_collections += 1
        interval = self.interval
        if took > self.pause:
            interval = interval / 2
        elif took < self.pause / 3:
            interval = interval * 2
        # Objects that are only in flight (a busy server's requests) are walked however often it
        # looks: at most ``share`` of the time goes to walking them.
        interval = max(interval, took / self.share)
        self.interval = min(self.max_young_interval, max(self.min_interval, interval))

    def _old_grew(self, now: float) -> bool:
        if now - self._last_check < self.old_check:
            return False
        self._last_check = now
        return len(gc.get_objects(2)) > self._old_after_full + self.old_slack

    def full(self) -> None:
        """A full collection now (the timer's; also for a test)."""
        gc.collect()
        self.full_collections += 1
        self._old_after_full = len(gc.get_objects(2))
        if self._loop is not None:
            self._last_full = self._last_check = self._loop.time()

    def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._was_enabled is not None:
            if self._was_enabled:
                gc.enable()
            self._was_enabled = None
