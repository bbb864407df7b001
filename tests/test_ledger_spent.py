"""The ledger's spend for budgets, kept per client between batches (``Ledger.spent``): over a
random run of records (some from the day before, some across a month's end), batches sent and
confirmed, and reads at moving times, every read equals the sum read afresh from the store's
view and the pending spend."""

from __future__ import annotations

import random
import time

from truckllm.accounting.ledger import Ledger
from truckllm.providers.base import Usage
from truckllm.stores.base import View, day_of, month_of
from truckllm.telemetry.record import RequestRecord

MONTH_END = time.mktime((2026, 12, 31, 23, 50, 0, 0, 0, 0)) - time.timezone  # 23:50 UTC


def afresh(ledger: Ledger, client: str, now: float) -> tuple[int, int, int]:
    """spent() without what it kept: read from the view and the pending spend."""
    kept, ledger._spent = ledger._spent, {}
    try:
        return ledger.spent(client, now)
    finally:
        ledger._spent = kept


def test_spent_kept_between_batches_equals_the_spend_read_afresh() -> None:
    rng = random.Random(7)
    ledger = Ledger("test")
    clients = ["a", "b", ""]
    now = MONTH_END
    reads = 0
    for step in range(3000):
        now += rng.choice((0.0, 0.5, 3.0, 40.0, 1800.0))
        op = rng.random()
        if op < 0.6:
            arrived = now - rng.choice((0.0, 1.0, 700.0, 5000.0))  # some before midnight
            rec = RequestRecord(
                arrived,
                f"r{step}",
                "chat",
                rng.choice(clients) or None,
                "m",
                provider="p",
                key_id="k",
                status=200,
                usage=Usage(3, 4),
                cost_usd=rng.choice((0, 1, 250, 10**6)) / 1e9,
            )
            ledger.add(rec)
        elif op < 0.65:
            ledger.next_batch(now)
        elif op < 0.7 and ledger.inflight is not None:
            spend = {c: rng.randrange(10**6) for c in clients if c}
            ledger.confirmed(View(day_of(now), month_of(now), spend, dict(spend), dict(spend)))
        else:
            for client in ("a", "b"):
                assert ledger.spent(client, now) == afresh(ledger, client, now), (step, client)
                reads += 1
    assert reads > 500 and now > MONTH_END + 10 * 86400  # days, a month's and a year's end
