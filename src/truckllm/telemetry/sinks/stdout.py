"""The ``stdout`` sink: JSON Lines on standard output (logs go to standard error)."""

from __future__ import annotations

import asyncio
import sys

from truckllm.config.schema import StdoutSinkConfig
from truckllm.telemetry.record import RequestRecord
from truckllm.telemetry.sinks.base import DeliveryFailed, QueueSink

_PIPE_BUF = 4096  # a write this small reaches a pipe whole, even with other writers on it


def _chunks(lines: list[bytes]) -> list[bytes]:
    """Whole lines grouped into writes of at most ``_PIPE_BUF`` bytes (a longer line alone), so
    worker processes sharing the output never split each other's lines."""
    out: list[bytes] = []
    group: list[bytes] = []
    size = 0
    for line in lines:
        if group and size + len(line) > _PIPE_BUF:
            out.append(b"".join(group))
            group, size = [], 0
        group.append(line)
        size += len(line)
    if group:
        out.append(b"".join(group))
    return out


def _write(lines: list[bytes]) -> None:
    out = sys.stdout
    buffer = getattr(out, "buffer", None)
    out.flush()
    for chunk in _chunks(lines):
        if buffer is not None:
            buffer.write(chunk)
            buffer.flush()
        else:  # a text-only stream (captured output)
            out.write(chunk.decode())
            out.flush()


class StdoutSink(QueueSink):
    type = "stdout"

    def __init__(self, name: str, config: StdoutSinkConfig) -> None:
        super().__init__(
            name,
            max_queue=config.max_queue,
            batch_size=config.batch_size,
            flush_interval=config.flush_interval,
        )

    async def deliver(self, batch: list[RequestRecord]) -> None:
        lines = await self.encoder.lines(batch)
        try:
            await asyncio.to_thread(_write, lines)  # a slow reader of the pipe must not stall us
        except (OSError, ValueError) as exc:  # ValueError: stdout closed
            raise DeliveryFailed("write_failed", f"stdout: {exc}") from exc
