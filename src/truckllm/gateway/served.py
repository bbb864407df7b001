"""A committed upstream reply, and the error that ends a stream after its first byte."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from truckllm.errors import APIError
from truckllm.gateway.resolve import Target
from truckllm.providers.base import Reply, UpstreamError
from truckllm.routing import Estimate, Outcome, OutcomeKind, Pick


@dataclass(slots=True)
class Served:
    """A committed upstream reply: the one the client gets."""

    reply: Reply
    pick: Pick
    target: Target
    attempts: int
    started: float
    first: bytes | None = None
    ttft_s: float | None = None
    upstream_s: float = 0.0  # time spent waiting on upstreams, all attempts so far
    estimate: Estimate | None = None  # what the request was guessed to use (billing fallback)
    events_out: int = 0  # stream events relayed to the client
    outcome: Outcome | None = None  # a success not yet reported to the router: see settle()
    # Told when a committed stream fails (after its report to the pick): the failure log line.
    on_broken: Callable[[Served, UpstreamError, OutcomeKind], None] | None = None

    async def abandon(self) -> None:
        """A stream given up before its relay began (the client left first): the attempt
        reported as cancelled, the upstream connection closed."""
        self.pick.done(Outcome(OutcomeKind.CANCELLED, 200))
        await self.reply.aclose()

    def settle(self) -> None:
        """Report a deferred outcome (once). A whole success is reported after its answer is on
        its way to the client, so learning from it is not on the request's critical path."""
        outcome, self.outcome = self.outcome, None
        if outcome is not None:
            self.pick.done(outcome)


class StreamBroken(Exception):
    """The upstream failed after the first byte went to the client."""

    def __init__(self, error: APIError) -> None:
        super().__init__(error.message)
        self.error = error
