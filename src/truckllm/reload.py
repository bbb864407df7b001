"""Hot reload of the configuration file: on demand (admin API), on SIGHUP, and when the file
changes (polled, so it works on every filesystem and inside containers).

Two phases: load, validate and build the whole new runtime, then swap one reference. On any
failure nothing changes and the error is logged, counted and returned. In-flight requests finish
on the runtime they started with; key state (counters, cooldowns, averages) carries over by id.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from truckllm.config import Config, ConfigError, parse_config
from truckllm.gateway import RuntimeHolder

log = logging.getLogger("truckllm.reload")

# Settings read once at start-up: a reload that changes them says they need a restart.
_RESTART_ONLY: tuple[tuple[str, Callable[[Config], object]], ...] = (
    ("server.listen", lambda c: c.server.listen),
    ("server.shutdown_timeout", lambda c: c.server.shutdown_timeout),
    ("server.drain_delay", lambda c: c.server.drain_delay),
    ("logging", lambda c: c.logging),
    ("metrics", lambda c: c.metrics),
    ("storage", lambda c: c.storage),
)


@dataclass
class ReloadResult:
    ok: bool
    when: float  # unix time
    trigger: str
    problems: list[str] = field(default_factory=list)
    restart_needed: list[str] = field(default_factory=list)


class Reloader:
    """Owns reloads of one runtime holder. ``listeners`` get ``(ok, unix_time)`` after every
    attempt (the metrics' last-reload gauges subscribe)."""

    def __init__(
        self, holder: RuntimeHolder, path: str | os.PathLike[str], interval_s: float = 1.0
    ) -> None:
        self.holder = holder
        self.path = Path(path)
        self.interval_s = interval_s
        self.last = ReloadResult(True, time.time(), "start")
        self.succeeded = 0
        self.failed = 0
        self.listeners: list[Callable[[bool, float], None]] = []
        self._lock = asyncio.Lock()
        self._seen = self._fingerprint()
        self._task: asyncio.Task[None] | None = None

    def _fingerprint(self) -> tuple[int, int, int] | None:
        try:
            st = self.path.stat()
        except OSError:
            return None
        return (st.st_mtime_ns, st.st_size, st.st_ino)

    async def reload(self, trigger: str) -> ReloadResult:
        async with self._lock:
            self._seen = self._fingerprint()
            old = self.holder.config
            result = ReloadResult(False, time.time(), trigger)
            try:
                text = self.path.read_text(encoding="utf-8")
                config = parse_config(
                    text, str(self.path), provider_types=self.holder.registry.names()
                )
                self.holder.swap(config)  # builds the whole runtime first; raises if it cannot
            except ConfigError as exc:
                result.problems = exc.problems
            except OSError as exc:
                result.problems = [f"{self.path}: cannot read: {exc.strerror or exc}"]
            except Exception as exc:  # a provider refusing its settings while being built
                result.problems = [f"{self.path}: {exc}"]
            else:
                result.ok = True
                result.restart_needed = [
                    name for name, get in _RESTART_ONLY if get(old) != get(config)
                ]
            self._finish(result)
            return result

    def _finish(self, result: ReloadResult) -> None:
        self.last = result
        if result.ok:
            self.succeeded += 1
            log.info(
                "configuration reloaded", extra={"trigger": result.trigger, "file": str(self.path)}
            )
            if result.restart_needed:
                log.warning(
                    "reloaded settings that take effect only after a restart",
                    extra={"settings": result.restart_needed},
                )
        else:
            self.failed += 1
            log.error(
                "configuration reload failed; the previous configuration stays in force",
                extra={"trigger": result.trigger, "problems": result.problems},
            )
        for listener in self.listeners:
            listener(result.ok, result.when)

    def request(self, trigger: str) -> None:
        """Schedule a reload from a synchronous context (a signal handler)."""
        task = asyncio.get_running_loop().create_task(
            self.reload(trigger), name=f"truckllm-reload-{trigger}"
        )
        task.add_done_callback(lambda t: t.cancelled() or t.exception())

    def start_watching(self) -> None:
        if self.interval_s > 0 and self._task is None:
            self._task = asyncio.get_running_loop().create_task(
                self._watch(), name="truckllm-config-watch"
            )

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(self.interval_s)
            seen = self._fingerprint()
            if seen is None or seen == self._seen:
                continue
            # Editors write in steps: wait until the file holds still before reading it.
            await asyncio.sleep(min(self.interval_s, 0.2))
            if self._fingerprint() != seen:
                continue
            await self.reload("file")
