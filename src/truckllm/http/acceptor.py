"""Accepting on a socket that other processes accept on too (``server.workers``), one connection
at a time.

The loop's own server accepts every connection waiting each time the socket is readable. When
the workers share one listening socket, a burst of new connections (a client opening its pool)
then lands on whichever worker wakes first: 32 of 32 ``wrk`` connections on one worker in a
measured start, its sibling idle (``bench/workers.py``). Taking one connection per wake-up is not
enough (the worker that is awake polls again before its sibling wakes: 24 of 32). So each worker
publishes its open connections in a table the workers share (:class:`Loads`, memory mapped by
the supervisor before the fork), and one holding more than the least loaded of the others plus
``slack`` leaves the socket alone for ``defer`` seconds, once: a connection still waiting after
that is accepted, so one that a stalled or dead sibling does not take waits no longer.

The same duck type as the part of :class:`asyncio.Server` that :class:`~truckllm.http.server.
HTTPServer` uses: ``sockets`` and ``close()``.
"""

from __future__ import annotations

import asyncio
import ctypes
import errno
import logging
import mmap
import socket
from collections.abc import Callable

log = logging.getLogger("truckllm.http")

FD_ERRNOS = frozenset((errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM))
RETRY_AFTER_FD_ERROR = 0.1  # seconds without accepting after running out of descriptors


DEFER = 0.002  # seconds a worker over its share waits for a sibling to accept
SLACK = 1  # connections over the least loaded sibling's before a worker defers


class Loads:
    """Open connections per worker, in memory shared by every worker (made before the fork)."""

    def __init__(self, workers: int) -> None:
        self._map = mmap.mmap(-1, max(workers, 1) * ctypes.sizeof(ctypes.c_int))
        self.counts = (ctypes.c_int * workers).from_buffer(self._map)

    def over_share(self, slot: int, mine: int) -> bool:
        counts = self.counts
        counts[slot] = mine
        others = [counts[i] for i in range(len(counts)) if i != slot]
        return bool(others) and mine > min(others) + SLACK


class OneAtATime:
    """Accepts one connection per readiness of ``sock`` and hands it to ``protocol`` on the
    loop; ``failed`` hears of accepts that found no descriptor (then it pauses a moment). With
    ``loads`` (and this worker's ``slot`` in it, ``load()`` its open connections), a worker over
    its share defers to its siblings first."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        sock: socket.socket,
        protocol: Callable[[], asyncio.Protocol],
        failed: Callable[[OSError], None],
        loads: Loads | None = None,
        slot: int = 0,
        load: Callable[[], int] = lambda: 0,
    ) -> None:
        self.loop = loop
        self.sockets = [sock]
        self._sock = sock
        self._protocol = protocol
        self._failed = failed
        self._open = True
        self._loads, self._slot, self._load = loads, slot, load
        self._deferred = False
        self._starting: set[asyncio.Task[object]] = set()
        sock.setblocking(False)
        loop.add_reader(sock.fileno(), self._accept)

    def _accept(self) -> None:
        loads = self._loads
        if loads is not None and not self._deferred and loads.over_share(self._slot, self._load()):
            self._deferred = True  # once: a connection still waiting after that is ours
            self.loop.remove_reader(self._sock.fileno())
            self.loop.call_later(DEFER, self._resume)
            return
        self._deferred = False
        try:
            conn, _ = self._sock.accept()
        except (BlockingIOError, InterruptedError):
            return  # another worker took it
        except OSError as exc:
            if exc.errno in FD_ERRNOS:
                self._failed(exc)
                self.loop.remove_reader(self._sock.fileno())
                self.loop.call_later(RETRY_AFTER_FD_ERROR, self._resume)
            elif exc.errno not in (errno.ECONNABORTED, errno.EPROTO):
                log.warning("accept failed: %s", exc)
            return
        conn.setblocking(False)
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        task = self.loop.create_task(self._start(conn))
        self._starting.add(task)
        task.add_done_callback(self._starting.discard)

    async def _start(self, conn: socket.socket) -> None:
        try:
            await self.loop.connect_accepted_socket(self._protocol, conn)
        except OSError:
            conn.close()  # gone before it started: nothing to serve

    def _resume(self) -> None:
        if self._open:
            self.loop.add_reader(self._sock.fileno(), self._accept)

    def close(self) -> None:
        """Stop accepting; the socket stays open for the other workers (and the supervisor)."""
        if self._open:
            self._open = False
            self.loop.remove_reader(self._sock.fileno())
