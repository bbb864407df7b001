"""The wait of a writer task that sends in batches (request-log sinks, the trace exporter)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Sized


async def batch_ready(
    queue: Sized,
    wake: asyncio.Event,
    full: Callable[[], bool],
    closing: Callable[[], bool],
    interval: float,
) -> bool:
    """Wait until something is queued, then until the batch is ``full()``, the writer is
    closing or ``interval`` seconds have passed; False once closing with nothing queued.
    Producers set ``wake`` on the first item and on a full batch, and ``close()`` sets it."""
    while not queue:
        if closing():
            return False
        wake.clear()
        await wake.wait()
    if not full() and not closing():
        wake.clear()  # set again by a full batch or by close()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(interval):
                await wake.wait()
    return True
