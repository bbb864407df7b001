"""The usage ledger's in-process side: counts what finished requests used, until the next batch.

``add`` runs once per request on the event loop: a few dict and integer operations. A background
task swaps the pending counts out as a :class:`~truckllm.stores.base.Batch` and hands it to the
store; a batch the store did not confirm is sent again, unchanged, so the store (which applies
each batch once) never counts a request twice nor drops one.

Spend for the budgets is the store's view (every process's flushed spend) plus this process's
spend not yet confirmed by the store.
"""

from __future__ import annotations

from truckllm.providers.base import Usage
from truckllm.stores.base import COST, METRICS, SAVED, Batch, RowKey, View, day_of, month_of
from truckllm.telemetry.record import RequestRecord

COUNTED_ENDPOINTS = frozenset(
    {"chat", "embeddings", "messages", "responses"}
    | {"completions", "moderations", "images"}
    | {"audio.speech", "audio.transcriptions", "audio.translations"}
)
_N = len(METRICS)


def nanos_of(cost_usd: float | None) -> int:
    """The record's cost back in nano-dollars (the API layer set it from an exact integer)."""
    return round(cost_usd * 1e9) if cost_usd else 0


class _Spend:
    __slots__ = ("day", "day_nanos", "month", "month_nanos", "total_nanos")

    def __init__(self, day: str, month: str) -> None:
        self.day, self.month = day, month
        self.day_nanos = self.month_nanos = self.total_nanos = 0

    def add(self, day: str, month: str, nanos: int) -> None:
        if day != self.day:
            self.day, self.day_nanos = day, 0
        if month != self.month:
            self.month, self.month_nanos = month, 0
        self.day_nanos += nanos
        self.month_nanos += nanos
        self.total_nanos += nanos


class Ledger:
    def __init__(self, origin: str) -> None:
        self.origin = origin
        self.pending: dict[tuple[int, RowKey], list[int]] = {}
        self.cooldowns: dict[str, float] = {}
        self.inflight: Batch | None = None  # sent, not yet confirmed
        self.view = View()
        self._seq = 0
        self._day = ""  # the UTC day and month of the last record, cached
        self._day_ends = 0.0
        self._month = ""
        self._unconfirmed: dict[str, _Spend] = {}  # spend not yet in ``view``
        self._period = ("", "", 0.0, 0.0)  # (day, month, start, end) of the last spent() call
        self._inflight_spend: dict[str, _Spend] = {}
        # spent() by client without the unconfirmed spend (the store's view and the spend in
        # flight): (day, month, today, this month, in total); a batch sent or confirmed empties it
        self._spent: dict[str, tuple[str, str, int, int, int]] = {}

    def add(self, rec: RequestRecord) -> None:
        self.count(rec, int(rec.time) // 60 * 60, nanos_of(rec.cost_usd))

    def count(self, rec: RequestRecord, minute: int, cost: int) -> None:
        """:meth:`add` with the record's minute and cost in nano-dollars (``nanos_of``) read
        by the caller, who shares them with the other counts (``api/counts.py``)."""
        if rec.endpoint not in COUNTED_ENDPOINTS:
            return
        row: RowKey = (
            rec.client_id or "",
            rec.provider or "",
            rec.key_id or "",
            rec.upstream_model or rec.model or "",
            rec.alias or "",
            rec.session_id or "",
        )
        k = (minute, row)
        counts = self.pending.get(k)
        if counts is None:
            counts = self.pending[k] = [0] * _N
        counts[0] += 1
        if rec.status >= 400 or rec.status == 0:
            counts[1] += 1
        usage: Usage | None = rec.usage
        if usage is not None:
            if usage.estimated:
                counts[2] += 1
            counts[3] += usage.prompt_tokens
            counts[4] += usage.completion_tokens
            counts[5] += usage.cached_tokens
            counts[6] += usage.reasoning_tokens
        if rec.saved_usd:  # a cache hit: what the upstream call it replaced cost
            counts[SAVED] += nanos_of(rec.saved_usd)
        if cost:
            counts[COST] += cost
            if row[0]:
                self._spend(row[0], minute, cost)

    def _spend(self, client: str, when: int, nanos: int) -> None:
        if when >= self._day_ends or not self._day:
            self._day, self._month = day_of(when), month_of(when)
            self._day_ends = (when // 86400 + 1) * 86400
        s = self._unconfirmed.get(client)
        if s is None:
            s = self._unconfirmed[client] = _Spend(self._day, self._month)
        s.add(self._day, self._month, nanos)

    def spent(self, client: str, now: float) -> tuple[int, int, int]:
        """(today, this month, in total) in nano-dollars, UTC."""
        day, month, start, end = self._period
        if not start <= now < end:  # UTC days are 86,400 s of Unix time; months end with one
            start = now // 86400 * 86400
            day, month = day_of(now), month_of(now)
            self._period = (day, month, start, start + 86400)
        # The store's view and the spend in flight change only with a batch: kept until then.
        base = self._spent.get(client)
        if base is None or base[0] != day or base[1] != month:
            v = self.view
            d = v.spend_day.get(client, 0) if v.day == day else 0
            m = v.spend_month.get(client, 0) if v.month == month else 0
            t = v.spend_total.get(client, 0)
            s = self._inflight_spend.get(client) if self._inflight_spend else None
            if s is not None:
                if s.day == day:
                    d += s.day_nanos
                if s.month == month:
                    m += s.month_nanos
                t += s.total_nanos
            base = self._spent[client] = (day, month, d, m, t)
        _, _, d, m, t = base
        s = self._unconfirmed.get(client)  # spend not yet sent to the store
        if s is not None:
            if s.day == day:
                d += s.day_nanos
            if s.month == month:
                m += s.month_nanos
            t += s.total_nanos
        return d, m, t

    # -- batches ------------------------------------------------------------------------------

    def next_batch(self, now: float) -> Batch:
        """The batch to send: the unconfirmed one again, else the pending counts (swapped out)."""
        if self.inflight is not None:
            self.inflight.now = now
            return self.inflight
        self._seq += 1
        batch = Batch(self.origin, self._seq, now, self.pending, self.cooldowns)
        self.pending, self.cooldowns = {}, {}
        self._inflight_spend, self._unconfirmed = self._unconfirmed, {}
        self._spent = {}
        self.inflight = batch
        return batch

    def confirmed(self, view: View) -> None:
        self.inflight = None
        self._inflight_spend = {}
        self._spent = {}
        self.view = view

    @property
    def backlog(self) -> int:
        return len(self.pending) + (len(self.inflight.usage) if self.inflight else 0)
