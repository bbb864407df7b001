"""Request-log sinks over real I/O: a webhook receiver on loopback that fails and recovers, files
that rotate, stdout, and plugin sink types."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import os
import textwrap
import threading
import time
import tracemalloc
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiohttp import web
from helpers import Gateway, Response, wait_until
from prometheus_client.parser import text_string_to_metric_families

from truckllm.api import App
from truckllm.config import ConfigError, parse_config
from truckllm.config.schema import PluginSinkConfig, WebhookSinkConfig
from truckllm.config.secret import Secret
from truckllm.telemetry.hub import Telemetry
from truckllm.telemetry.record import RecordBus, RequestRecord
from truckllm.telemetry.sinks import QueueSink, RecordEncoder, SinkContext, sink_registry
from truckllm.telemetry.sinks.file import RotatingFile
from truckllm.telemetry.sinks.webhook import WebhookSink
from truckllm.testing.loop import LoopThread
from truckllm.testing.mock import MockUpstream
from truckllm.testing.serve import ServerThread

HMAC_SECRET = "whsec-TOPSECRET"
RECORD_FIELDS = {
    "time",
    "request_id",
    "client_id",
    "session_id",
    "client_ip",
    "endpoint",
    "model",
    "alias",
    "provider",
    "key_id",
    "upstream_model",
    "status",
    "error_code",
    "attempts",
    "latency_ms",
    "ttft_ms",
    "overhead_ms",
    "tokens",
    "cost_usd",
    "stream",
}


def wait_for(cond: Callable[[], object]) -> None:
    """Sinks retry with backoff: a longer deadline than the default."""
    wait_until(cond, timeout=10.0)


def config(url: str, sinks: str) -> str:
    return f"""
    providers:
      - id: openai
        base_url: {url}
        models: [gpt-4o-mini]
        keys:
          - id: k1
            secret: sk-upstream-TOPSECRET-1
            pricing: {{input_token_cost: 0.001, output_token_cost: 0.002}}
          - id: k2
            secret: sk-upstream-TOPSECRET-2
            pricing: {{input_token_cost: 0.003, output_token_cost: 0.004}}
    model_aliases:
      gpt-4: openai:gpt-4-0613
    server:
      api_keys: [{{id: team-a, key: client-TOPSECRET}}]
    routing: {{strategy: round_robin}}
    logging:
      sinks:
{sinks}
    """


CLIENT = {"Authorization": "Bearer client-TOPSECRET"}


def chat(gw: Gateway, i: int = 0, stream: bool = False) -> Response:
    body: dict[str, Any] = {
        "model": "gpt-4" if i % 2 else "gpt-4o-mini",
        "messages": [{"role": "user", "content": f"request {i}"}],
    }
    if stream:
        body |= {"stream": True, "stream_options": {"include_usage": True}}
    resp = gw.post("/v1/chat/completions", body, headers=CLIENT)
    assert resp.status == 200
    return resp


def sink_metrics(gw: Gateway) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = gw.request("GET", "/metrics").body.decode()
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name.startswith("truckllm_sink_"):
                out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def sink_value(gw: Gateway, name: str, **labels: str) -> float:
    want = set(labels.items())
    return sum(v for (n, ls), v in sink_metrics(gw).items() if n == name and want <= set(ls))


# -- a webhook receiver on loopback ---------------------------------------------------------------


@dataclass
class Receiver:
    """Answers ``fail_status`` while ``failing()`` says so, else 200. Records every POST."""

    fail_first: int = 0  # fail this many POSTs, then recover
    fail_status: int = 500
    down: bool = False  # fail until told otherwise
    posts: list[tuple[dict[str, str], bytes, int]] = field(default_factory=list)
    accepted: list[list[dict[str, Any]]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    url: str = ""
    runner: web.AppRunner | None = None

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        with self.lock:
            failing = self.down or len(self.posts) < self.fail_first
            status = self.fail_status if failing else 200
            self.posts.append((dict(request.headers), body, status))
            if not failing:
                self.accepted.append(orjson.loads(body))
        return web.Response(status=status, text="ok" if status == 200 else "nope")

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/hook", self.handle)
        self.runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        server = site._server
        assert server is not None and hasattr(server, "sockets")
        self.url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}/hook"

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()

    def records(self) -> list[dict[str, Any]]:
        with self.lock:
            return [r for batch in self.accepted for r in batch]


@pytest.fixture
def receiver_factory(loop_thread: LoopThread) -> Iterator[Callable[..., Receiver]]:
    started: list[Receiver] = []

    def make(**kw: Any) -> Receiver:
        r = Receiver(**kw)
        loop_thread.run(r.start())
        started.append(r)
        return r

    yield make
    for r in started:
        loop_thread.run(r.stop())


def webhook_sink(url: str, **options: Any) -> str:
    settings = {
        "type": "webhook",
        "url": url,
        "batch_size": 5,
        "flush_interval": 0.05,
        "backoff_base": 0.01,
        "backoff_max": 0.05,
        "hmac_secret": HMAC_SECRET,
        "headers": {"Authorization": "Bearer hook-TOPSECRET"},
        **options,
    }
    return "        - " + orjson.dumps(settings).decode()


def test_webhook_receiver_fails_then_recovers_and_gets_every_record_once_in_order(
    upstream: MockUpstream,
    gateway_factory: Callable[..., Gateway],
    receiver_factory: Callable[..., Receiver],
) -> None:
    receiver = receiver_factory(fail_first=4)
    gw = gateway_factory(config(upstream.url, webhook_sink(receiver.url, max_retries=None)))
    sent = [chat(gw, i, stream=i % 5 == 4) for i in range(23)]
    wait_for(lambda: len(receiver.records()) == 23)

    records = receiver.records()
    assert [r["request_id"] for r in records] == [r.headers["x-request-id"] for r in sent]
    assert all(len(batch) <= 5 for batch in receiver.accepted)
    for record, resp in zip(records, sent, strict=True):
        assert set(record) == RECORD_FIELDS
        assert record["key_id"] == resp.headers["x-truckllm-key-id"]
        assert record["client_id"] == "team-a"
        assert record["status"] == 200 and record["error_code"] is None
        assert record["endpoint"] == "chat" and record["provider"] == "openai"
        assert record["alias"] == (record["model"] if record["model"] == "gpt-4" else None)
        assert record["time"].endswith("Z") and "T" in record["time"]
        assert record["tokens"]["prompt"] > 0 and record["cost_usd"] > 0
        assert (record["ttft_ms"] is not None) == record["stream"]

    # The failed POSTs were retries of the first batch: same id, same bytes, same signature.
    statuses = [status for _, _, status in receiver.posts]
    assert statuses[:4] == [500] * 4 and set(statuses[4:]) == {200}
    first_id = receiver.posts[0][0]["X-TruckLLM-Batch-Id"]
    assert [h["X-TruckLLM-Batch-Id"] for h, _, _ in receiver.posts[:5]] == [first_id] * 5
    assert len({body for _, body, _ in receiver.posts[:5]}) == 1
    batch_ids = [h["X-TruckLLM-Batch-Id"] for h, _, status in receiver.posts if status == 200]
    assert len(set(batch_ids)) == len(batch_ids)
    for headers, body, _ in receiver.posts:
        digest = hmac.new(HMAC_SECRET.encode(), body, hashlib.sha256).hexdigest()
        assert hmac.compare_digest(headers["X-TruckLLM-Signature"], f"sha256={digest}")
        assert headers["Authorization"] == "Bearer hook-TOPSECRET"
        assert headers["Content-Type"] == "application/json"
        assert b"TOPSECRET" not in body

    assert sink_value(gw, "truckllm_sink_delivered_records_total", type="webhook") == 23
    assert sink_value(gw, "truckllm_sink_dropped_records_total") == 0
    assert sink_value(gw, "truckllm_sink_queue_depth") == 0
    assert b"TOPSECRET" not in gw.request("GET", "/metrics").body


def test_webhook_drops_beyond_the_queue_bound_are_counted_and_the_rest_arrive(
    upstream: MockUpstream,
    gateway_factory: Callable[..., Gateway],
    receiver_factory: Callable[..., Receiver],
) -> None:
    receiver = receiver_factory(down=True, fail_status=503)
    sink = webhook_sink(receiver.url, batch_size=1, max_queue=3, max_retries=None)
    gw = gateway_factory(config(upstream.url, sink))
    sent = [chat(gw, i) for i in range(10)]
    wait_for(lambda: len(receiver.posts) >= 3)  # retrying the first record

    labels = {"sink": "webhook-0", "type": "webhook"}
    assert sink_value(gw, "truckllm_sink_queue_depth", **labels) == 3
    assert sink_value(gw, "truckllm_sink_dropped_records_total", reason="queue_full") == 7
    assert sink_value(gw, "truckllm_sink_delivered_records_total") == 0

    with receiver.lock:
        receiver.down = False
    wait_for(lambda: sink_value(gw, "truckllm_sink_delivered_records_total") == 3)
    assert sink_value(gw, "truckllm_sink_dropped_records_total", reason="queue_full") == 7
    assert sink_value(gw, "truckllm_sink_queue_depth") == 0
    # Nothing more arrives: closing the gateway delivers all a sink still holds, and the dropped
    # records are gone.
    gw.server.stop()
    assert [r["request_id"] for r in receiver.records()] == [
        r.headers["x-request-id"] for r in sent[:3]
    ]


def test_webhook_gives_up_after_max_retries_and_at_once_on_a_client_error(
    upstream: MockUpstream,
    gateway_factory: Callable[..., Gateway],
    receiver_factory: Callable[..., Receiver],
) -> None:
    failing = receiver_factory(down=True)
    refusing = receiver_factory(down=True, fail_status=400)
    sinks = "\n".join(
        [
            webhook_sink(failing.url, batch_size=1, max_retries=2),
            webhook_sink(refusing.url, batch_size=1, max_retries=2),
        ]
    )
    gw = gateway_factory(config(upstream.url, sinks))
    for i in range(2):
        chat(gw, i)
    wait_for(
        lambda: sink_value(gw, "truckllm_sink_dropped_records_total", reason="delivery_failed") == 2
    )
    assert len(failing.posts) == 2 * 3  # the first try and two retries, per record
    wait_for(lambda: sink_value(gw, "truckllm_sink_dropped_records_total", reason="rejected") == 2)
    assert len(refusing.posts) == 2


def test_close_flushes_queued_records_without_waiting_for_the_interval(
    upstream: MockUpstream,
    receiver_factory: Callable[..., Receiver],
) -> None:
    receiver = receiver_factory()
    # An interval no test outlives: only the close can send the records (within its 5 s grace).
    sink = webhook_sink(receiver.url, flush_interval=3600, batch_size=100)
    app = App(parse_config(textwrap.dedent(config(upstream.url, sink)), "<t>", {}))
    server = ServerThread(app).start()
    gw = Gateway(app, server)
    sent = [chat(gw, i) for i in range(3)]
    assert sink_value(gw, "truckllm_sink_queue_depth") == 3  # held, waiting for the interval
    assert receiver.posts == []
    server.stop()  # the lifespan shutdown flushes
    assert [r["request_id"] for r in receiver.records()] == [
        r.headers["x-request-id"] for r in sent
    ]


def test_close_gives_up_at_its_deadline_and_counts_what_is_left(
    receiver_factory: Callable[..., Receiver],
) -> None:
    receiver = receiver_factory(down=True)
    cfg = WebhookSinkConfig(
        type="webhook",
        url=receiver.url,
        batch_size=2,
        flush_interval=0.01,
        backoff_base=0.01,
        backoff_max=0.02,
        max_retries=None,
        hmac_secret=Secret(HMAC_SECRET),
    )

    async def scenario() -> WebhookSink:
        sink = WebhookSink("webhook-0", cfg)
        await sink.start()
        for i in range(5):
            sink.submit(RequestRecord(time.time(), f"r{i}", "chat"))
        # Retrying the first batch (forever: no max_retries).
        await asyncio.to_thread(wait_for, lambda: receiver.posts)
        # Only its deadline can end the close; the 10 s only bounds the test.
        await asyncio.wait_for(sink.close(0.2), 10)
        sink.submit(RequestRecord(time.time(), "late", "chat"))  # after close: counted only
        return sink

    sink = asyncio.run(scenario())
    assert sink.dropped == {"shutdown": 6}
    assert sink.depth == 0 and sink.delivered == 0
    assert receiver.posts


# -- file ------------------------------------------------------------------------------------------


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in path.read_bytes().splitlines()]


def test_file_sink_rotates_by_size_keeps_only_keep_files_and_matches_requests(
    tmp_path: Path, upstream: MockUpstream
) -> None:
    log_path = tmp_path / "logs" / "requests.jsonl"
    sink = (
        f"        - {{type: file, path: '{log_path}', max_bytes: 1500, keep: 2, "
        "flush_interval: 0.01}"
    )
    app = App(parse_config(textwrap.dedent(config(upstream.url, sink)), "<t>", {}))
    server = ServerThread(app).start()
    gw = Gateway(app, server)
    sent = [chat(gw, i, stream=i % 4 == 0) for i in range(20)]
    server.stop()  # flushes

    files = sorted(p.name for p in log_path.parent.iterdir())
    assert files == ["requests.jsonl", "requests.jsonl.1", "requests.jsonl.2"]
    kept: list[dict[str, Any]] = []
    for name in ("requests.jsonl.2", "requests.jsonl.1", "requests.jsonl"):
        path = log_path.parent / name
        assert 0 < path.stat().st_size <= 1500
        kept += read_jsonl(path)  # every line is a JSON object
    ids = [r.headers["x-request-id"] for r in sent]
    assert 2 <= len(kept) < len(sent)
    assert [r["request_id"] for r in kept] == ids[-len(kept) :]  # the newest, in order
    by_id = {r.headers["x-request-id"]: r for r in sent}
    for record in kept:
        assert set(record) == RECORD_FIELDS
        resp = by_id[record["request_id"]]
        assert record["key_id"] == resp.headers["x-truckllm-key-id"]
        assert record["attempts"] == int(resp.headers["x-truckllm-attempts"])
        if not record["stream"]:
            usage = resp.json()["usage"]
            assert record["tokens"]["prompt"] == usage["prompt_tokens"]
            assert record["tokens"]["completion"] == usage["completion_tokens"]
            pricing = app.config.providers[0].keys[0 if record["key_id"] == "k1" else 1].pricing
            assert record["cost_usd"] == pytest.approx(
                pricing.cost_usd(usage["prompt_tokens"], usage["completion_tokens"]), abs=1e-9
            )
    assert b"TOPSECRET" not in b"".join(p.read_bytes() for p in log_path.parent.iterdir())


def test_file_rotates_when_a_period_of_rotate_every_begins(tmp_path: Path) -> None:
    now = [1_000_000.0 * 60]  # a period boundary for 60 s
    path = tmp_path / "r.jsonl"
    f = RotatingFile(path, max_bytes=None, rotate_every=60, keep=3, clock=lambda: now[0])
    f.write([b'{"n":1}\n'])
    now[0] += 59
    f.write([b'{"n":2}\n'])
    assert not (tmp_path / "r.jsonl.1").exists()
    now[0] += 1  # the next minute
    f.write([b'{"n":3}\n'])
    assert (tmp_path / "r.jsonl.1").read_bytes() == b'{"n":1}\n{"n":2}\n'
    assert path.read_bytes() == b'{"n":3}\n'
    f.close()

    # A file left by an earlier run in an earlier period is rolled before the first write.
    os.utime(path, (now[0], now[0]))
    now[0] += 3600
    g = RotatingFile(path, rotate_every=60, keep=3, clock=lambda: now[0])
    g.write([b'{"n":4}\n'])
    g.close()
    assert (tmp_path / "r.jsonl.1").read_bytes() == b'{"n":3}\n'
    assert (tmp_path / "r.jsonl.2").read_bytes() == b'{"n":1}\n{"n":2}\n'
    assert path.read_bytes() == b'{"n":4}\n'


def test_file_retention_zero_and_files_beyond_keep_are_removed(tmp_path: Path) -> None:
    path = tmp_path / "r.jsonl"
    for i in range(1, 6):  # left by an earlier configuration with a larger keep
        (tmp_path / f"r.jsonl.{i}").write_bytes(b"old\n")
    f = RotatingFile(path, max_bytes=10, keep=1)
    f.write([b"0123456789\n", b"abcdefghij\n", b"klmnopqrst\n"])
    f.close()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.jsonl", "r.jsonl.1"]
    assert (tmp_path / "r.jsonl.1").read_bytes() == b"abcdefghij\n"
    assert path.read_bytes() == b"klmnopqrst\n"

    none = RotatingFile(tmp_path / "z.jsonl", max_bytes=10, keep=0)
    none.write([b"0123456789\n", b"abcdefghij\n"])
    none.close()
    assert (tmp_path / "z.jsonl").read_bytes() == b"abcdefghij\n"
    assert not (tmp_path / "z.jsonl.1").exists()


def test_writers_sharing_a_path_rotate_it_together_without_losing_lines(tmp_path: Path) -> None:
    """As ``server.workers`` processes do: each writer has its own descriptors, so the lock
    excludes the other writer as it would another process."""
    path = tmp_path / "shared.jsonl"
    writers = {name: RotatingFile(path, max_bytes=1000, keep=1000) for name in ("a", "b")}

    def run(name: str) -> None:
        for i in range(200):
            lines = [orjson.dumps({"w": name, "n": i * 3 + j}) + b"\n" for j in range(3)]
            writers[name].write(lines)

    threads = [threading.Thread(target=run, args=(name,)) for name in writers]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for w in writers.values():
        w.close()

    rotated = sorted(tmp_path.glob("shared.jsonl.*"), key=lambda p: int(p.suffix[1:]))
    files = [*reversed(rotated), path]  # oldest first
    seen: dict[str, list[int]] = {"a": [], "b": []}
    for f in files:
        assert f.stat().st_size <= 1000
        for record in read_jsonl(f):
            seen[record["w"]].append(record["n"])
    assert seen == {"a": list(range(600)), "b": list(range(600))}


def test_a_failing_file_sink_never_touches_requests(
    tmp_path: Path, upstream: MockUpstream, gateway_factory: Callable[..., Gateway]
) -> None:
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("")
    sink = f"        - {{type: file, path: '{blocker}/requests.jsonl', flush_interval: 0.01}}"
    gw = gateway_factory(config(upstream.url, sink))
    for i in range(4):
        chat(gw, i)
    wait_for(
        lambda: sink_value(gw, "truckllm_sink_dropped_records_total", reason="write_failed") == 4
    )
    chat(gw, 5)


# -- stdout, several sinks, plugins ----------------------------------------------------------------


def test_stdout_sink_and_any_number_of_sinks_at_once(
    tmp_path: Path, upstream: MockUpstream, capsys: pytest.CaptureFixture[str]
) -> None:
    sinks = "\n".join(
        [
            "        - {type: stdout, flush_interval: 0.01}",
            f"        - {{type: file, path: '{tmp_path}/a.jsonl'}}",
            f"        - {{type: file, path: '{tmp_path}/b.jsonl'}}",
        ]
    )
    app = App(parse_config(textwrap.dedent(config(upstream.url, sinks)), "<t>", {}))
    server = ServerThread(app).start()
    sent = [chat(Gateway(app, server), i) for i in range(3)]
    server.stop()
    out = [orjson.loads(line) for line in capsys.readouterr().out.splitlines() if line]
    ids = [r.headers["x-request-id"] for r in sent]
    assert [r["request_id"] for r in out] == ids
    for name in ("a.jsonl", "b.jsonl"):
        assert [r["request_id"] for r in read_jsonl(tmp_path / name)] == ids


class MemorySink(QueueSink):
    type = "memory"
    delivered_batches: list[list[str]]

    def __init__(self, ctx: SinkContext) -> None:
        assert isinstance(ctx.config, PluginSinkConfig)
        super().__init__(ctx.name, max_queue=100, batch_size=2, flush_interval=0.01)
        self.prefix = ctx.config.options["prefix"]
        self.delivered_batches = []

    async def deliver(self, batch: list[RequestRecord]) -> None:
        self.delivered_batches.append([self.prefix + r.request_id for r in batch])


def test_plugin_sink_types_register_by_name_and_take_options() -> None:
    registry = sink_registry(load_plugins=False)
    assert registry.group == "truckllm.sinks"
    assert registry.names() == ["file", "stdout", "webhook"]
    registry.register("memory", MemorySink)
    text = """
providers: [{id: openai, base_url: 'http://127.0.0.1:9/v1'}]
logging: {sinks: [{type: memory, options: {prefix: "m:"}}]}
"""
    with pytest.raises(ConfigError, match=r"logging.sinks\[0\].type: unknown sink type 'memory'"):
        parse_config(text, "<t>", {})
    cfg = parse_config(text, "<t>", {}, sink_types=registry.names())

    async def scenario() -> MemorySink:
        bus = RecordBus()
        telemetry = Telemetry(cfg, bus, registry)
        await telemetry.start()
        for i in range(3):
            bus.publish(RequestRecord(time.time(), f"r{i}", "chat"))
        await telemetry.close(1.0)
        (sink,) = telemetry.sinks
        assert isinstance(sink, MemorySink)
        return sink

    sink = asyncio.run(scenario())
    assert sink.name == "memory-0"
    assert sink.delivered_batches == [["m:r0", "m:r1"], ["m:r2"]]


def test_a_sink_that_cannot_start_is_left_out_and_the_gateway_serves(
    upstream: MockUpstream,
) -> None:
    registry = sink_registry(load_plugins=False)

    def broken(ctx: SinkContext) -> Any:
        raise RuntimeError("plugin bug")

    registry.register("broken", broken)
    sinks = "        - {type: broken}\n        - {type: stdout}"
    text = textwrap.dedent(config(upstream.url, sinks))
    app = App(parse_config(text, "<t>", {}, sink_types=registry.names()))
    app.telemetry.registry = registry
    server = ServerThread(app).start()
    try:
        chat(Gateway(app, server))
        assert [s.name for s in app.telemetry.sinks] == ["stdout-1"]
    finally:
        server.stop()


@pytest.mark.parametrize(
    ("sink", "problem"),
    [
        ("{type: file}", "logging.sinks[0].path: is required"),
        ("{type: file, path: x, max_bytes: 0}", "logging.sinks[0].max_bytes: must be at least 1"),
        ("{type: file, path: x, keep: -1}", "logging.sinks[0].keep: must not be negative"),
        (
            "{type: file, path: x, rotate_every: 0}",
            "logging.sinks[0].rotate_every: must be positive",
        ),
        ("{type: file, path: x, max_queue: 0}", "logging.sinks[0].max_queue: must be at least 1"),
        (
            "{type: webhook, url: 'ftp://x'}",
            "logging.sinks[0].url: 'ftp://x' is not an http(s) URL",
        ),
        ("{type: webhook, url: 'http://x', max_retries: -1}", "max_retries: must not be negative"),
        (
            "{type: webhook, url: 'http://x', timeout: 0}",
            "logging.sinks[0].timeout: must be positive",
        ),
        ("{type: webhook, url: 'http://x', hmac_secret: [1]}", "hmac_secret: expected a string"),
        ("{type: webhook, url: 'http://x', retries: 3}", "logging.sinks[0].retries: unknown key"),
        ("{type: stdout, path: x}", "logging.sinks[0].path: unknown key"),
        ("{type: fiel, path: x}", "logging.sinks[0].type: 'fiel' is not one of file, webhook"),
        ("{path: x}", "logging.sinks[0].type: is required"),
        ("{type: kafka, options: {}}", "logging.sinks[0].type: unknown sink type 'kafka'"),
    ],
)
def test_sink_config_errors_name_the_key(sink: str, problem: str) -> None:
    text = f"providers: [{{id: openai, base_url: 'http://x/v1'}}]\nlogging: {{sinks: [{sink}]}}\n"
    with pytest.raises(ConfigError) as err:
        parse_config(text, "<t>", {})
    assert any(problem in p for p in err.value.problems), err.value.problems


def test_two_file_sinks_may_not_share_a_path() -> None:
    text = (
        "providers: [{id: openai, base_url: 'http://x/v1'}]\n"
        "logging: {sinks: [{type: file, path: /tmp/a.jsonl}, {type: file, path: /tmp/../tmp/a.jsonl}]}\n"
    )
    with pytest.raises(
        ConfigError, match=r"sinks\[1\].path: .* already written by logging.sinks\[0\]"
    ):
        parse_config(text, "<t>", {})


def test_encoded_lines_hold_only_their_bytes() -> None:
    """A batch's lines are kept until the sink has written them all: each holds its own bytes,
    not the buffer ``orjson.dumps`` reserved (8 KB for a 400-byte line, which made every
    batch of 1,000 grow the heap by megabytes and fault it in again)."""
    encoder = RecordEncoder()
    batch = [
        RequestRecord(1714564800.0 + i, f"r{i}", "chat", model="gpt-4o-mini", status=200)
        for i in range(1000)
    ]
    tracemalloc.start()
    try:
        before, _ = tracemalloc.get_traced_memory()
        lines = asyncio.run(encoder.lines(batch))
        held = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    size = sum(map(len, lines))
    assert len(lines) == 1000 and all(line.endswith(b"}\n") for line in lines)
    assert [orjson.loads(line)["request_id"] for line in lines] == [r.request_id for r in batch]
    assert held < 2 * size, (held, size)


def test_record_times_are_rfc3339_utc_and_client_text_is_cut() -> None:
    encoder = RecordEncoder()
    record = RequestRecord(
        1714564800.1239, "r1", "chat", model="m" * 5000, error_code="e" * 5000, status=200
    )
    obj = encoder.obj(record)
    assert obj["time"] == "2024-05-01T12:00:00.123Z"
    assert obj["model"] == "m" * 256 and obj["error_code"] == "e" * 256
    assert obj["tokens"] is None and obj["cost_usd"] is None and obj["ttft_ms"] is None
    assert set(obj) == RECORD_FIELDS
