"""The garbage-collection policy of a serving process: young collections when new objects pile
up, a full one rarely.

Reference counting frees everything the gateway's request, stream and connection paths make:
they leave no reference cycles (``gc.DEBUG_SAVEALL`` after thousands of requests and streams,
and a test that fails on any). What a collection does there is walk live objects and find
nothing, and a walk's pause grows with the objects it walks. With 1,000 streams open the heap
holds about 100,000 tracked objects (a stream's futures, coroutines and buffers, about 100 each),
and a full walk of them paused the gateway 70-110 ms (``bench/streaming.py``, the gateway's
collections timed with ``gc.callbacks``): the time to first token of every stream starting then,
and the gap of every stream open then, took all of it.

So a collection never walks the whole heap while serving, except rarely:

- **Young** (:meth:`Collector._tick`, looked at every ``interval``): the young and middle
  generations are collected together (``gc.collect(1)``) once ``young`` more tracked objects
  were made than freed since the last collection (``gc.get_count()[0]``, O(1)), and at least
  every ``max_young_interval``. That walks only the objects made since the last one and still
  alive; what survives (a stream's objects, alive until it ends) moves to the old generation and
  is not walked again. 1,000 streams starting in a second are walked in pieces of about
  ``young`` objects (a few milliseconds). The count alone cannot bound the young generation:
  old objects freed by reference counting (a finished stream's) take it down while new ones
  pile up, hence the timer. A shorter timer walks the objects in flight (every open stream's
  waiter for its next event) more often for nothing: 1,000 streams kept 5% of the gateway busy
  with collections every 25 ms.
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

CHECK_INTERVAL = 0.05  # how often the young objects' count is looked at
YOUNG_SLACK = 5_000  # tracked objects made and not freed that may wait for a young collection
YOUNG_MAX_INTERVAL = 0.5  # a young collection at least this often
OLD_CHECK_INTERVAL = 10.0  # how often the old generation's size is looked at
OLD_SLACK = 1_000_000  # old objects beyond the last full collection's that trigger another
FULL_MAX_INTERVAL = 600.0  # a full collection at least this often


class Collector:
    """Young collections when ``young`` objects wait (or ``max_young_interval`` passed); a full
    one every ``max_interval`` or when the old generation grew by ``old_slack``.
    ``young_collections`` and ``full_collections`` count what it ran."""

    def __init__(
        self,
        interval: float = CHECK_INTERVAL,
        young: int = YOUNG_SLACK,
        max_young_interval: float = YOUNG_MAX_INTERVAL,
        old_check: float = OLD_CHECK_INTERVAL,
        old_slack: int = OLD_SLACK,
        max_interval: float = FULL_MAX_INTERVAL,
    ) -> None:
        self.interval = interval
        self.young = young
        self.max_young_interval = max_young_interval
        self.old_check = old_check
        self.old_slack = old_slack
        self.max_interval = max_interval
        self.young_collections = 0
        self.full_collections = 0
        self._old_after_full = 0  # the old generation's size after the last full collection
        self._last_full = self._last_young = self._last_check = 0.0
        self._was_enabled: bool | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def start(self) -> None:
        self._loop = loop = asyncio.get_running_loop()
        self._was_enabled = gc.isenabled()
        gc.disable()  # no collections by allocation count; _tick decides
        self._last_full = self._last_young = self._last_check = loop.time()
        self._old_after_full = len(gc.get_objects(2))
        self._timer = loop.call_later(self.interval, self._tick)

    def _tick(self) -> None:
        loop = self._loop
        assert loop is not None
        now = loop.time()
        if now - self._last_full >= self.max_interval or self._old_grew(now):
            self.full()
        elif gc.get_count()[0] > self.young or now - self._last_young >= self.max_young_interval:
            gc.collect(1)
            self.young_collections += 1
            self._last_young = now
        self._timer = loop.call_later(self.interval, self._tick)

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
            self._last_full = self._last_young = self._last_check = self._loop.time()

    def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._was_enabled is not None:
            if self._was_enabled:
                gc.enable()
            self._was_enabled = None
