"""What the attempt loop tells a request's tracing (``telemetry/tracing.py`` implements it).

The loop holds ``None`` when tracing is off: then the hook costs one ``is None`` per attempt."""

from __future__ import annotations

from typing import Protocol

from truckllm.providers.base import Reply, RequestRejected, UpstreamError
from truckllm.routing import OutcomeKind, Pick


class AttemptTrace(Protocol):
    def attempt(self, pick: Pick, model: str, number: int) -> None:
        """An attempt is about to be sent with ``pick``'s key for ``model`` (its number, from 1);
        the upstream request carries this attempt's trace context."""

    def failed(
        self,
        pick: Pick,
        kind: OutcomeKind,
        failure: Reply | UpstreamError | RequestRejected | None,
        now: float,
    ) -> None:
        """The attempt ended without a committed reply, after its report to the router (so the
        key's state shows the cooldown it decided); ``now`` on the router's clock."""
