"""The ``redis`` store: shared by every worker and replica (Redis 6.2 or newer, or Redis Cluster).

Every write is one atomic Lua script. Keys carry hash tags so that each script touches one slot:

- ``<prefix>:{ledger}:...``: the usage ledger, spend, cooldowns, batch sequence numbers and the
  list of live processes. One slot: a batch is applied whole, exactly once.

  - ``u:<g>:<bucket start>`` (hash, ``g`` in ``minute``/``hour``/``day``): field
    ``client \\x1f provider \\x1f key \\x1f model \\x1f alias \\x1f metric`` -> count
    (nano-dollars for the cost). Minute buckets expire after 2 days, hours after 91.
  - ``i:<g>`` (sorted set): the bucket starts, for range queries.
  - ``r:<g>:<dimension>:<bucket start>`` (hash) and ``rsince``: the same usage by one dimension,
    which answers queries grouped by one dimension or none (:mod:`truckllm.stores.redis_rollups`).
  - ``sd:<YYYY-MM-DD>``, ``sm:<YYYY-MM>``, ``st`` (hashes): spend per client id.
  - ``cool`` (hash): key id -> cooling until (unix ms). ``peers`` (sorted set): live processes.
  - ``seq:<origin>``: the last batch applied from one process (expires after a day).

- ``<prefix>:{lim:<scope>}:<window>`` (hash): a shared limit window, bucket -> units granted.
- ``<prefix>:kv:<key>`` (string with an expiry): the key-value table (``kv_*``).

The scripts use Redis's clock (``TIME``) for the limit windows, so processes' clocks may differ.
"""

from __future__ import annotations

import bisect
import time
from collections.abc import Sequence
from typing import Any

import orjson

from truckllm.stores.base import (
    COST,
    DIMENSIONS,
    GRANULARITIES,
    METRICS,
    WIRE,
    Adjust,
    Ask,
    Batch,
    Grant,
    RowKey,
    StoreError,
    UsageQuery,
    UsageResult,
    View,
    day_of,
    month_of,
    row_key,
)
from truckllm.stores.redis_rollups import (
    rollup_dim,
    rollup_key,
    rollup_rows,
    rollup_writes,
    since_key,
)
from truckllm.stores.tables import (
    PEER_TTL_S,
    RETENTION_S,
    bucket_width_ms,
    choose_granularity,
    group_rows,
)

_SEP = "\x1f"
_EXPIRE_S = {"minute": int(RETENTION_S["minute"]) + 3600, "hour": 91 * 86400, "day": 0}

SYNC_LUA = """
local p = cjson.decode(ARGV[1])
local last = tonumber(redis.call('GET', KEYS[1]) or '-1')
if p.seq > last then
  for _, it in ipairs(p.incr) do redis.call('HINCRBY', KEYS[it[1]], it[2], it[3]) end
  for _, it in ipairs(p.zadd) do redis.call('ZADD', KEYS[it[1]], it[2], it[2]) end
  for _, it in ipairs(p.expire) do redis.call('EXPIRE', KEYS[it[1]], it[2]) end
  for _, it in ipairs(p.trim) do redis.call('ZREMRANGEBYSCORE', KEYS[it[1]], '-inf', it[2]) end
  for _, it in ipairs(p.setnx) do redis.call('SET', KEYS[it[1]], it[2], 'NX') end
  for _, it in ipairs(p.cool) do
    local cur = tonumber(redis.call('HGET', KEYS[3], it[1]) or '0')
    if tonumber(it[2]) > cur then redis.call('HSET', KEYS[3], it[1], it[2]) end
  end
  redis.call('SET', KEYS[1], p.seq, 'EX', 86400)
end
local now = tonumber(p.now_ms)
redis.call('ZADD', KEYS[2], now, p.origin)
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now - tonumber(p.peer_ttl_ms))
local cool = redis.call('HGETALL', KEYS[3])
local live = {}
for i = 1, #cool, 2 do
  if tonumber(cool[i + 1]) <= now then
    redis.call('HDEL', KEYS[3], cool[i])
  else
    live[#live + 1] = cool[i]
    live[#live + 1] = cool[i + 1]
  end
end
return {redis.call('HGETALL', KEYS[4]), redis.call('HGETALL', KEYS[5]),
        redis.call('HGETALL', KEYS[6]), live, redis.call('ZCARD', KEYS[2])}
"""

LEASE_LUA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local p = cjson.decode(ARGV[1])
for _, a in ipairs(p.adj) do
  local k = KEYS[a[1]]
  local b = a[3]
  if b < 0 then b = math.floor(now / a[2]) end
  local amount = tonumber(a[4])
  if amount >= 0 or redis.call('HEXISTS', k, b) == 1 then
    local v = redis.call('HINCRBY', k, b, amount)
    if v <= 0 then redis.call('HDEL', k, b) end
  end
end
local out = {}
for _, a in ipairs(p.ask) do
  local k, width, reach, limit, amount = KEYS[a[1]], a[2], a[3], a[4], a[5]
  local lo = math.floor((now - reach) / width)
  local all = redis.call('HGETALL', k)
  local used = 0
  local live = {}
  for i = 1, #all, 2 do
    local b, v = tonumber(all[i]), tonumber(all[i + 1])
    if b < lo then
      redis.call('HDEL', k, all[i])
    else
      used = used + v
      live[#live + 1] = {b, v}
    end
  end
  local n = math.min(amount, limit - used)
  if n < 0 then n = 0 end
  local cur = math.floor(now / width)
  if n > 0 then redis.call('HINCRBY', k, cur, n) end
  redis.call('PEXPIRE', k, reach + width)
  local retry = 0
  if n < amount then
    table.sort(live, function(x, y) return x[1] < y[1] end)
    local missing, freed = amount - n, 0
    retry = reach
    for _, e in ipairs(live) do
      freed = freed + e[2]
      if freed >= missing then
        retry = (e[1] + 1) * width + reach - now
        break
      end
    end
  end
  out[#out + 1] = {n, cur, retry}
end
return out
"""


class RedisStore:
    shared = True

    def __init__(self, url: str, prefix: str = "truckllm", timeout_s: float = 1.0) -> None:
        try:
            import redis.asyncio as aioredis
            from redis.asyncio.retry import Retry
            from redis.backoff import NoBackoff
        except ImportError as exc:  # pragma: no cover - depends on the installation
            raise StoreError("the redis store needs the redis package: pip install redis") from exc
        self._redis = aioredis.Redis.from_url(
            url,
            socket_timeout=timeout_s,
            socket_connect_timeout=timeout_s,
            retry=Retry(NoBackoff(), 0),
            decode_responses=False,
        )
        self._sync = self._redis.register_script(SYNC_LUA)
        self._lease = self._redis.register_script(LEASE_LUA)
        self.prefix = prefix
        self._ledger = f"{prefix}:{{ledger}}"
        self._error: str | None = None

    @classmethod
    def from_config(cls, config: Any) -> RedisStore:
        if config.url is None:
            raise StoreError("storage.runtime.url is required for the redis store")
        return cls(config.url.reveal(), config.prefix, config.timeout)

    def health(self) -> tuple[bool, str | None]:
        return self._error is None, self._error

    async def _call(self, script: Any, keys: list[str], payload: bytes) -> Any:
        try:
            result = await script(keys=keys, args=[payload])
        except Exception as exc:
            self._error = f"redis unreachable: {type(exc).__name__}: {exc}"[:300]
            raise StoreError(self._error) from exc
        self._error = None
        return result

    # -- usage --------------------------------------------------------------------------------

    async def sync(self, batch: Batch) -> View:
        L = self._ledger
        day, month = day_of(batch.now), month_of(batch.now)
        keys = [
            f"{L}:seq:{batch.origin}",
            f"{L}:peers",
            f"{L}:cool",
            f"{L}:sd:{day}",
            f"{L}:sm:{month}",
            f"{L}:st",
        ]
        index: dict[str, int] = {k: i + 1 for i, k in enumerate(keys)}

        def ki(key: str) -> int:
            i = index.get(key)
            if i is None:
                keys.append(key)
                i = index[key] = len(keys)
            return i

        incr: list[list[Any]] = []
        zadd: list[list[int]] = []
        expire: list[list[int]] = []
        seen: set[str] = set()
        for (minute, row), counts in batch.usage.items():
            prefix = _SEP.join(row) + _SEP
            for name, g in GRANULARITIES.items():
                start = minute // g * g
                hkey = f"{L}:u:{name}:{start}"
                h = ki(hkey)
                for m, c in enumerate(counts):
                    if c:  # past WIRE, a field older readers skip (it has one part more)
                        field = prefix + str(m) if m < WIRE else f"{prefix}x{_SEP}{m}"
                        incr.append([h, field, str(c)])
                if hkey not in seen:
                    seen.add(hkey)
                    zadd.append([ki(f"{L}:i:{name}"), start])
                    if _EXPIRE_S[name]:
                        expire.append([h, _EXPIRE_S[name]])
            cost = counts[COST]
            if cost and row[0]:
                incr.append([ki(f"{L}:sd:{day_of(minute)}"), row[0], str(cost)])
                incr.append([ki(f"{L}:sm:{month_of(minute)}"), row[0], str(cost)])
                incr.append([index[f"{L}:st"], row[0], str(cost)])
                for k in (f"{L}:sd:{day_of(minute)}", f"{L}:sm:{month_of(minute)}"):
                    if k not in seen:
                        seen.add(k)
                        expire.append([ki(k), 100 * 86400])
        setnx = rollup_writes(L, batch, ki, incr, expire, _EXPIRE_S)  # by one dimension
        trim = [
            [ki(f"{L}:i:{name}"), int(batch.now - RETENTION_S[name])]
            for name in ("minute", "hour")
            if f"{L}:i:{name}" in index
        ]
        payload = orjson.dumps(
            {
                "seq": batch.seq,
                "origin": batch.origin,
                "now_ms": str(int(batch.now * 1000)),
                "peer_ttl_ms": str(int(PEER_TTL_S * 1000)),
                "incr": incr,
                "zadd": zadd,
                "expire": expire,
                "trim": trim,
                "setnx": setnx,
                "cool": [[k, str(int(u * 1000))] for k, u in batch.cooldowns.items()],
            }
        )
        sd, sm, st, cool, peers = await self._call(self._sync, keys, payload)
        return View(
            day,
            month,
            _int_hash(sd),
            _int_hash(sm),
            _int_hash(st),
            {k: v / 1000.0 for k, v in _int_hash(cool).items()},
            max(int(peers), 1),
        )

    async def query(self, q: UsageQuery) -> UsageResult:
        granularity = choose_granularity(q, time.time())
        L = self._ledger
        hi = "+inf" if q.end is None else f"({q.end}"
        dim = rollup_dim(q)
        try:
            pipe = self._redis.pipeline(transaction=False)
            pipe.zrangebyscore(f"{L}:i:{granularity}", q.start, hi)
            pipe.get(since_key(L))
            found, since = await pipe.execute()
            starts = [int(s) for s in found]
            # rollups for the buckets that began once they were kept; whole rows before that
            cut = len(starts)
            if dim is not None and since is not None:
                g = GRANULARITIES[granularity]
                cut = bisect.bisect_left(starts, (int(since) // g + 1) * g)
            pipe = self._redis.pipeline(transaction=False)
            for s in starts[:cut]:
                pipe.hgetall(f"{L}:u:{granularity}:{s}")
            for s in starts[cut:]:
                pipe.hgetall(rollup_key(L, granularity, dim or "", s))
            hashes = await pipe.execute()
        except Exception as exc:
            self._error = f"redis unreachable: {type(exc).__name__}: {exc}"[:300]
            raise StoreError(self._error) from exc
        flat = rollup_rows(dim, starts[cut:], hashes[cut:]) if dim is not None else []
        for s, h in zip(starts[:cut], hashes[:cut], strict=True):
            rows: dict[RowKey, list[int]] = {}
            for field, value in h.items():
                parts = field.decode().split(_SEP)
                if len(parts) == len(DIMENSIONS) + 2 and parts[-2] == "x":  # past WIRE
                    parts = parts[:-2] + parts[-1:]
                if len(parts) not in (6, len(DIMENSIONS) + 1):  # 6: from before ``session``
                    continue
                row = row_key(parts[:-1])
                counts = rows.get(row)
                if counts is None:
                    counts = rows[row] = [0] * len(METRICS)
                counts[int(parts[-1])] = int(value)
            flat.extend((s, row, counts) for row, counts in rows.items())
        return group_rows(q, flat, granularity)

    # -- shared limits ------------------------------------------------------------------------

    async def lease(
        self, scope: str, asks: Sequence[Ask], adjusts: Sequence[Adjust]
    ) -> list[Grant]:
        keys: list[str] = []
        index: dict[str, int] = {}

        def ki(window: str) -> int:
            i = index.get(window)
            if i is None:
                keys.append(f"{self.prefix}:{{lim:{scope}}}:{window}")
                i = index[window] = len(keys)
            return i

        adj = [
            [
                ki(a.window),
                bucket_width_ms(a.span_s),
                -1 if a.bucket is None else a.bucket,
                str(a.amount),
            ]
            for a in adjusts
        ]
        ask = [
            [
                ki(a.window),
                bucket_width_ms(a.span_s),
                int((a.span_s + a.ttl_s + a.slack_s) * 1000),
                a.limit,
                a.amount,
            ]
            for a in asks
        ]
        result: list[Any] = await self._call(
            self._lease, keys, orjson.dumps({"adj": adj, "ask": ask})
        )
        return [
            Grant(
                a.window, int(n), int(bucket), max(int(retry), 1) / 1000.0 if n < a.amount else 0.0
            )
            for a, (n, bucket, retry) in zip(asks, result, strict=True)
        ]

    # -- the key-value table ------------------------------------------------------------------

    async def _kv(self, op: str, key: str, *args: Any) -> Any:
        try:
            result = await getattr(self._redis, op)(f"{self.prefix}:kv:{key}", *args)
        except Exception as exc:
            self._error = f"redis unreachable: {type(exc).__name__}: {exc}"[:300]
            raise StoreError(self._error) from exc
        self._error = None
        return result

    async def kv_get(self, key: str) -> bytes | None:
        value = await self._kv("get", key)
        return bytes(value) if value is not None else None

    async def kv_set(self, key: str, value: bytes, ttl_s: float) -> None:
        await self._kv("set", key, value, None, max(int(ttl_s * 1000), 1))

    async def kv_delete(self, key: str) -> bool:
        return bool(await self._kv("delete", key))

    async def close(self) -> None:
        await self._redis.aclose()


def _int_hash(flat: Any) -> dict[str, int]:
    if isinstance(flat, dict):
        return {_s(k): int(v) for k, v in flat.items()}
    return {_s(flat[i]): int(flat[i + 1]) for i in range(0, len(flat), 2)}


def _s(v: Any) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)
