"""What the upstream pools count for ``/metrics``: requests that found every connection their
cap (``providers[].max_connections``) allows busy and waited for one, those that gave up after
``pool_timeout``, and how many wait right now; per label (the provider's id, as the caller of
:meth:`truckllm.http.client.HTTPClient.post` names it)."""

from __future__ import annotations


class PoolStats:
    """Plain counters, read when the metrics page is rendered; touched only on a wait."""

    __slots__ = ("timeouts", "waiting", "waits")

    def __init__(self) -> None:
        self.waits: dict[str, int] = {}  # requests that waited (once each, however long)
        self.timeouts: dict[str, int] = {}  # of them, those that failed after pool_timeout
        self.waiting: dict[str, int] = {}  # waiting now

    def began(self, label: str) -> None:
        self.waits[label] = self.waits.get(label, 0) + 1
        self.waiting[label] = self.waiting.get(label, 0) + 1

    def ended(self, label: str, timed_out: bool) -> None:
        self.waiting[label] -= 1
        if timed_out:
            self.timeouts[label] = self.timeouts.get(label, 0) + 1
