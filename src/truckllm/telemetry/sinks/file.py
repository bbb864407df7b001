"""The ``file`` sink: JSON Lines, rotated by size and by time, with a retention count."""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType
from typing import BinaryIO

from truckllm.config.schema import FileSinkConfig
from truckllm.telemetry.record import RequestRecord
from truckllm.telemetry.sinks.base import DeliveryFailed, QueueSink

fcntl: ModuleType | None
try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None


class RotatingFile:
    """An append-only file that rolls over to ``path.1`` (newest) ... ``path.<keep>`` (oldest):
    before a write would take it past ``max_bytes``, and when the wall clock enters a new
    period of ``rotate_every`` seconds (periods start at multiples of it, UTC, so 3600 rolls on
    the hour). Older files are deleted. A single line larger than ``max_bytes`` gets a file of
    its own.

    Several processes (``server.workers``) may write the same path: each write and rotation holds
    an advisory lock on the directory, sizes are read from the file itself, and a process whose
    file was rotated by another reopens the path.

    Blocking I/O: call it from a worker thread, one at a time (the sink serialises its batches).
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        max_bytes: int | None = None,
        rotate_every: float | None = None,
        keep: int = 5,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.path = Path(path)
        self.max_bytes = max_bytes
        self.rotate_every = rotate_every
        self.keep = keep
        self.clock = clock
        self._file: BinaryIO | None = None
        self._dir_fd: int | None = None
        self._period = 0

    def _period_of(self, t: float) -> int:
        return math.floor(t / self.rotate_every) if self.rotate_every else 0

    def write(self, lines: list[bytes]) -> None:
        try:
            with self._locked():
                self._write(lines)
        except OSError:
            self.close()  # start afresh with the next batch
            raise

    def _write(self, lines: list[bytes]) -> None:
        now = self.clock()
        if self._file is not None and self._moved():
            self._file.close()
            self._file = None
        if self._file is None:
            self._open(now)
        elif self.rotate_every and self._period_of(now) != self._period:
            self._rotate(now)
        f = self._file
        assert f is not None
        size = os.fstat(f.fileno()).st_size  # other processes may append to it too
        limit = self.max_bytes
        if limit is None or size + sum(map(len, lines)) <= limit:  # no line rolls the file over
            f.write(b"".join(lines))
            f.flush()
            return
        pending: list[bytes] = []
        for line in lines:
            if limit is not None and size and size + len(line) > limit:
                f.write(b"".join(pending))
                f.flush()
                pending.clear()
                self._rotate(now)
                f = self._file
                assert f is not None
                size = 0
            pending.append(line)
            size += len(line)
        f.write(b"".join(pending))
        f.flush()

    def close(self) -> None:
        try:
            if self._file is not None:
                self._file.close()
        finally:
            self._file = None
            if self._dir_fd is not None:
                os.close(self._dir_fd)
                self._dir_fd = None

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        if fcntl is None:  # pragma: no cover - no advisory locks here (Windows)
            yield
            return
        if self._dir_fd is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._dir_fd = os.open(self.path.parent, os.O_RDONLY)
        fcntl.flock(self._dir_fd, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(self._dir_fd, fcntl.LOCK_UN)

    def _moved(self) -> bool:
        """Whether the path no longer names the open file (another process rotated it)."""
        assert self._file is not None
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return True
        mine = os.fstat(self._file.fileno())
        return (st.st_ino, st.st_dev) != (mine.st_ino, mine.st_dev)

    def _open(self, now: float) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.rotate_every:
            try:
                mtime = self.path.stat().st_mtime
            except FileNotFoundError:
                pass
            else:  # left by an earlier run in an earlier period: roll it first
                if self._period_of(mtime) != self._period_of(now):
                    self._shift()
        self._file = self.path.open("ab")
        self._period = self._period_of(now)

    def _rotate(self, now: float) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        self._shift()
        self._open(now)

    def _shift(self) -> None:
        path = str(self.path)
        n = max(self.keep, 1)
        while True:  # files beyond the retention (also left by a larger ``keep`` earlier)
            try:
                os.remove(f"{path}.{n}")
            except FileNotFoundError:
                break
            n += 1
        if self.keep == 0:
            with contextlib.suppress(FileNotFoundError):
                os.remove(path)
            return
        for i in range(self.keep - 1, 0, -1):
            with contextlib.suppress(FileNotFoundError):
                os.replace(f"{path}.{i}", f"{path}.{i + 1}")
        with contextlib.suppress(FileNotFoundError):
            os.replace(path, f"{path}.1")


class FileSink(QueueSink):
    """Batches are encoded on the event loop in small chunks and written in a worker thread:
    the loop never waits on the disk."""

    type = "file"

    def __init__(self, name: str, config: FileSinkConfig) -> None:
        super().__init__(
            name,
            max_queue=config.max_queue,
            batch_size=config.batch_size,
            flush_interval=config.flush_interval,
        )
        self.config = config
        self.file = RotatingFile(config.path, config.max_bytes, config.rotate_every, config.keep)

    async def deliver(self, batch: list[RequestRecord]) -> None:
        lines = await self.encoder.lines(batch)
        try:
            await asyncio.to_thread(self.file.write, lines)
        except OSError as exc:
            raise DeliveryFailed("write_failed", f"{self.config.path}: {exc}") from exc

    async def release(self) -> None:
        await asyncio.to_thread(self.file.close)
