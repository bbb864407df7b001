"""What cache hits saved, in the usage ledger: the admin usage API reports ``saved_usd`` per
model and client, with the memory and the Redis state store; and the formats an older gateway or
store wrote (or reads) still work: their rows read ``saved_nanos`` as 0."""

from __future__ import annotations

from collections.abc import Callable
from decimal import Decimal
from typing import Any

import pytest
import redis
from helpers import Gateway, wait_until
from redis_server import RedisServer, redis_server  # noqa: F401 - a fixture

from truckllm.stores.base import METRICS, SAVED, WIRE, Batch
from truckllm.stores.tables import Tables, batch_from_json, batch_to_json
from truckllm.testing.mock import MockUpstream

CHAT: dict[str, Any] = {
    "model": "m",
    "messages": [{"role": "user", "content": "hi"}],
    "temperature": 0,
}
ADMIN = {"Authorization": "Bearer adm-1"}
PRICING = "{input_token_cost: 1.0, output_token_cost: 2.0, unit: per_1m_tokens}"


def config(url: str, storage: str) -> str:
    return f"""
    server:
      admin_api_key: adm-1
      api_keys: [{{key: client-a, id: a}}, {{key: client-b, id: b}}]
    providers:
      - id: p
        base_url: {url}
        models: [m]
        keys: [{{id: k1, secret: sk-1, pricing: {PRICING}}}]
    storage: {{runtime: {storage}}}
    cache: {{enabled: true}}
    """


@pytest.mark.parametrize("store", ["memory", "redis"])
def test_usage_reports_what_hits_saved_per_model_and_client(
    store: str,
    request: pytest.FixtureRequest,
    upstream: MockUpstream,
    gateway_factory: Callable[..., Gateway],
) -> None:
    storage = "{flush_interval: 0.05}"
    if store == "redis":
        server: RedisServer = request.getfixturevalue("redis_server")
        storage = f"{{type: redis, url: '{server.url}', flush_interval: 0.05}}"
    gw = gateway_factory(config(upstream.url, storage))
    a, b = {"Authorization": "Bearer client-a"}, {"Authorization": "Bearer client-b"}
    miss = gw.post("/v1/chat/completions", CHAT, headers=a)
    cost = Decimal(miss.headers["x-truckllm-cost-usd"])
    assert cost > 0
    for _ in range(2):
        hit = gw.post("/v1/chat/completions", CHAT, headers=a)
        assert hit.headers["x-truckllm-cache"] == "hit"
    gw.post("/v1/chat/completions", CHAT, headers=b)  # b's own miss: nothing saved

    def rows() -> dict[tuple[str, str, str], dict[str, Any]] | None:
        got = gw.request("GET", "/admin/v1/usage?group_by=client,provider,model", headers=ADMIN)
        data = got.json()
        if data["total"]["requests"] != 4:
            return None
        return {(r["client"], r["provider"], r["model"]): r for r in data["data"]}

    by = wait_until(rows, 10, "the usage of four requests")
    assert Decimal(by[("a", "cache", "m")]["saved_usd"]) == 2 * cost
    assert by[("a", "cache", "m")]["requests"] == 2
    assert Decimal(by[("a", "cache", "m")]["cost_usd"]) == 0
    assert Decimal(by[("a", "p", "m")]["saved_usd"]) == 0
    assert Decimal(by[("b", "p", "m")]["saved_usd"]) == 0
    total = gw.request("GET", "/admin/v1/usage", headers=ADMIN).json()["total"]
    assert Decimal(total["saved_usd"]) == 2 * cost and Decimal(total["cost_usd"]) == 2 * cost
    if store == "redis":
        assert_older_readers_skip_the_saved_field(request.getfixturevalue("redis_server").url)


def assert_older_readers_skip_the_saved_field(url: str) -> None:
    """An older gateway's reader keeps the fields of 7 parts (6 before ``session``) and sizes its
    counts by its own 8 metrics: the saved count must not be one of those."""
    client = redis.Redis.from_url(url)
    fields: list[list[str]] = []
    for key in client.scan_iter("truckllm:{ledger}:u:*"):
        fields += [f.decode().split("\x1f") for f in client.hkeys(key)]
    client.close()
    old_readable = [int(f[-1]) for f in fields if len(f) == 7]
    assert old_readable and max(old_readable) < WIRE
    assert any(f[-2:] == ["x", str(SAVED)] for f in fields if len(f) == 8)


ROW = ("a", "cache", "", "m", "", "")


def test_batches_and_snapshots_keep_the_older_row_format() -> None:
    counts = [1, 0, 0, 0, 0, 0, 0, 0, 0]
    counts[SAVED] = 123
    batch = Batch("o", 1, 60.0, {(60, ROW): counts})
    wire = batch_to_json(batch)
    assert len(wire["usage"][0]) == 1 + 6 + WIRE  # what an older store reads
    assert batch_from_json(wire).usage[(60, ROW)] == counts
    older = {**wire, "beyond": []}  # an older gateway's batch: no saved counts
    assert batch_from_json(older).usage[(60, ROW)] == [1] + [0] * (len(METRICS) - 1)

    tables = Tables()
    tables.apply(batch)
    snapshot = tables.dump()
    assert {len(r) for rows in snapshot["usage"].values() for r in rows} == {1 + 6 + WIRE}
    assert Tables.load(snapshot).usage["minute"][60][ROW] == counts
    old = {**snapshot, "beyond": {}}  # a snapshot from before saved_nanos
    assert Tables.load(old).usage["minute"][60][ROW][SAVED] == 0
    five = {  # and from before the session dimension
        **old,
        "usage": {n: [[r[0], *r[1:6], *r[7:]] for r in rows] for n, rows in old["usage"].items()},
    }
    assert Tables.load(five).usage["minute"][60][ROW][0] == 1
