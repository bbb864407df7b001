"""The state-store seam: what the gateway shares with (or persists through) a store.

A store keeps four things for the gateway: the usage ledger (aggregated counts and exact costs),
cooldowns, for stores shared by several processes the windows behind shared rate limits, and a
small key-value table with expiry (``kv_*``: Responses API conversations, and whatever else the
gateway must find again in any process).
The gateway never waits on a store on the hot path: usage and cooldowns travel in batches from a
background task (:meth:`Store.sync`), and shared limits are leased ahead of need
(:meth:`Store.lease`).

Units: money in integer nano-dollars (1e-9 USD), so sums are exact; wall-clock times in unix
seconds; usage buckets start at UTC minute, hour and day boundaries.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol

DIMENSIONS = ("client", "provider", "key", "model", "alias", "session")
METRICS = (
    "requests",
    "errors",
    "estimated",
    "prompt_tokens",
    "completion_tokens",
    "cached_tokens",
    "reasoning_tokens",
    "cost_nanos",
    "saved_nanos",
)
COST = METRICS.index("cost_nanos")
SAVED = METRICS.index("saved_nanos")  # what cache hits saved (docs/cache.md#accounting)
WIRE = SAVED
"""How many counts a usage row carries in the wire and file formats written before ``saved_nanos``
existed (``usage`` rows of batches, snapshots, query answers of an HTTP store): those still
carry these first ones, so older stores and readers keep working; the counts past them travel
apart (:func:`pad_counts` reads either)."""
GRANULARITIES: dict[str, int] = {"minute": 60, "hour": 3600, "day": 86400}
Granularity = Literal["minute", "hour", "day"]

# (client, provider, key id, model, alias, session); "" where a request has none. Rows written
# before the session dimension existed have five parts: they read as session "" (row_key()).
RowKey = tuple[str, str, str, str, str, str]


def row_key(parts: Sequence[object]) -> RowKey:
    """A usage row's key from its stored parts: six, or five from before ``session`` existed."""
    session = str(parts[5]) if len(parts) > 5 else ""
    return (str(parts[0]), str(parts[1]), str(parts[2]), str(parts[3]), str(parts[4]), session)


@dataclass(slots=True)
class Batch:
    """What one process hands its store since the previous batch. ``(origin, seq)`` makes a
    batch idempotent: a store applies each at most once, so a batch whose answer was lost can be
    sent again. ``usage`` maps (minute start, row) to counts in :data:`METRICS` order."""

    origin: str
    seq: int
    now: float  # the sender's wall clock: which day and month the budgets read
    usage: dict[tuple[int, RowKey], list[int]] = field(default_factory=dict)
    cooldowns: dict[str, float] = field(default_factory=dict)  # key id -> cooling until

    @property
    def empty(self) -> bool:
        return not self.usage and not self.cooldowns


@dataclass(slots=True)
class View:
    """What the gateway needs back from the store: every process's spend for the budgets (the
    UTC day and month of the batch's ``now``), cooldowns, and how many processes share it."""

    day: str = ""
    month: str = ""
    spend_day: dict[str, int] = field(default_factory=dict)  # client id -> nano-dollars
    spend_month: dict[str, int] = field(default_factory=dict)
    spend_total: dict[str, int] = field(default_factory=dict)
    cooldowns: dict[str, float] = field(default_factory=dict)
    peers: int = 1


@dataclass(frozen=True, slots=True)
class Ask:
    """A request for ``amount`` units of a shared window: ``limit`` units per ``span_s`` seconds,
    spent within ``ttl_s`` of the grant. ``slack_s`` covers the time from spending a unit to its
    request reaching the upstream."""

    window: str
    span_s: float
    limit: int
    amount: int
    ttl_s: float
    slack_s: float


@dataclass(frozen=True, slots=True)
class Adjust:
    """A correction to a shared window: ``amount`` units back (negative: leased, never spent) to
    the bucket they were granted in, or charged (positive) to the current one when ``bucket`` is
    ``None`` (tokens a request used beyond its estimate)."""

    window: str
    span_s: float
    amount: int
    bucket: int | None = None


@dataclass(frozen=True, slots=True)
class Grant:
    """``amount`` units of ``window`` (0 if none were free), counted in ``bucket``. When short,
    ``retry_s`` says when units free up."""

    window: str
    amount: int
    bucket: int
    retry_s: float = 0.0


@dataclass(frozen=True, slots=True)
class UsageQuery:
    group_by: tuple[str, ...] = ()
    start: int = 0  # unix seconds, inclusive
    end: int | None = None  # exclusive; None: no end
    bucket: Granularity | None = None  # also split rows by time


@dataclass(slots=True)
class UsageResult:
    granularity: Granularity
    rows: list[tuple[tuple[str, ...], int | None, list[int]]]  # (group, bucket start, counts)


class Store(Protocol):
    """One state store. Built from ``storage.runtime`` by the factory its type names; methods
    run on the gateway's event loop and may raise :class:`StoreError` (or any error) when the
    backend is unreachable: the caller keeps its data and tries again later."""

    shared: bool  # several processes share it: limits are leased, spend and cooldowns merged

    async def sync(self, batch: Batch) -> View:
        """Apply ``batch`` (at most once per ``(origin, seq)``) and return the current view."""
        ...

    async def lease(
        self, scope: str, asks: Sequence[Ask], adjusts: Sequence[Adjust]
    ) -> list[Grant]:
        """Grant units of ``scope``'s windows, never more than each window's limit, and apply
        ``adjusts`` first. One grant per ask, in order."""
        ...

    async def query(self, q: UsageQuery) -> UsageResult: ...

    async def kv_get(self, key: str) -> bytes | None:
        """The value kept under ``key``, or ``None`` (never set, deleted or expired)."""
        ...

    async def kv_set(self, key: str, value: bytes, ttl_s: float) -> None:
        """Keep ``value`` under ``key`` for ``ttl_s`` seconds, replacing any value there. A store
        may drop entries early to stay within its size bound."""
        ...

    async def kv_delete(self, key: str) -> bool:
        """Forget ``key``; whether it was there."""
        ...

    def health(self) -> tuple[bool, str | None]:
        """(ok, reason): ``False`` while the backend is unreachable and the gateway serves on
        local state."""
        ...

    async def close(self) -> None: ...


class StoreError(Exception):
    """A store's backend failed or could not be reached."""


def day_of(ts: float) -> str:
    return time.strftime("%Y-%m-%d", time.gmtime(ts))


def month_of(ts: float) -> str:
    return time.strftime("%Y-%m", time.gmtime(ts))


def pad_counts(counts: Sequence[object]) -> list[int]:
    """A row's counts as stored, ``len(METRICS)`` long: those an older writer did not know
    (``saved_nanos``) read as 0."""
    out = [int(c) for c in counts[: len(METRICS)]]  # type: ignore[call-overload]
    return out + [0] * (len(METRICS) - len(out))


def add_counts(into: list[int], counts: Sequence[int]) -> None:
    for i, c in enumerate(counts):
        into[i] += c
