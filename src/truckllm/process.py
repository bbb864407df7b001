"""Which process of the gateway this is: with ``server.workers: N`` the supervisor
(:mod:`truckllm.workers`) sets each forked worker's slot (0 to N-1) before it builds its app.

The dashboard's overview and request tail come from this process's own request records, so they
say which worker answered and how many there are (:func:`worker_info`)."""

from __future__ import annotations

import os

_slot: int | None = None  # None: the only process (server.workers: 1)


def set_worker(slot: int) -> None:
    global _slot
    _slot = slot


def worker_info(workers: int) -> dict[str, int | None]:
    """``index`` (None in a single process), ``count`` (``server.workers``) and ``pid``."""
    return {"index": _slot, "count": workers if _slot is not None else 1, "pid": os.getpid()}
