"""No configured secret ever leaves the process: not in logs, request logs (file and webhook),
metrics, admin responses, response headers or error bodies, whatever the traffic does."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import orjson
from aiohttp import web
from helpers import Response, request, wait_serving

from truckllm.testing.loop import LoopThread
from truckllm.testing.mock import MockUpstream, Scripted
from truckllm.testing.serve import free_port

SECRETS = {
    "upstream key 1": "sk-up-SECRET-one-4f8a",
    "upstream key 2": "sk-up-SECRET-two-9c1d",
    "client key": "cli-SECRET-7e2b",
    "admin key": "adm-SECRET-3a5f",
    "webhook hmac secret": "hmac-SECRET-6d0e",
    "provider header": "hdr-SECRET-1b9c",
}
CLIENT = {"Authorization": f"Bearer {SECRETS['client key']}"}
ADMIN = {"Authorization": f"Bearer {SECRETS['admin key']}"}


class Receiver:
    """A webhook endpoint that keeps every body it gets."""

    def __init__(self) -> None:
        self.bodies: list[bytes] = []
        self.headers: list[str] = []
        self.url = ""
        self._runner: web.AppRunner | None = None

    async def start(self) -> None:
        async def hook(request: web.Request) -> web.Response:
            self.bodies.append(await request.read())
            self.headers.append(str(dict(request.headers)))
            return web.Response(status=200)

        app = web.Application()
        app.router.add_post("/hook", hook)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        port = free_port()
        await web.TCPSite(self._runner, "127.0.0.1", port).start()
        self.url = f"http://127.0.0.1:{port}/hook"

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()


def test_no_output_ever_contains_a_configured_secret(
    upstream_factory: Callable[..., MockUpstream], loop_thread: LoopThread, tmp_path: Path
) -> None:
    upstream = upstream_factory(valid_keys={SECRETS["upstream key 1"], SECRETS["upstream key 2"]})
    receiver = Receiver()
    loop_thread.run(receiver.start())
    sink_file = tmp_path / "requests.jsonl"
    config = tmp_path / "config.yaml"
    config.write_text(f"""
providers:
  - id: openai
    base_url: {upstream.url}
    models: [gpt-4o-mini]
    headers: {{X-Org-Token: "{SECRETS["provider header"]}"}}
    keys:
      - {{id: k1, secret: "{SECRETS["upstream key 1"]}"}}
      - {{id: k2, secret: "{SECRETS["upstream key 2"]}"}}
model_aliases: {{gpt-4: openai:gpt-4o-mini}}
server:
  api_keys: [{{id: team, key: "{SECRETS["client key"]}"}}]
  admin_api_key: "{SECRETS["admin key"]}"
routing: {{strategy: round_robin}}
logging:
  level: debug
  format: json
  sinks:
    - {{type: file, path: "{sink_file}"}}
    - {{type: webhook, url: "{receiver.url}", hmac_secret: "{SECRETS["webhook hmac secret"]}", flush_interval: 0.1}}
    - {{type: stdout}}
""")
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen(
        [sys.executable, "-m", "truckllm", "-config", str(config), "-listen", f"127.0.0.1:{port}"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    seen: list[tuple[str, str]] = []  # (what, text) of every output to scan

    def keep(what: str, resp: Response) -> Response:
        seen.append((what, str(resp.headers) + resp.body.decode("utf-8", "replace")))
        return resp

    try:
        wait_serving(base + "/healthz", proc)
        chat = {"model": "gpt-4", "messages": [{"role": "user", "content": "hi"}]}
        url = base + "/v1/chat/completions"
        keep("chat", request("POST", url, chat, CLIENT))
        keep("stream", request("POST", url, {**chat, "stream": True}, CLIENT))
        # Upstream errors that echo the key (as OpenAI's 401 does, masked or not).
        for secret in (SECRETS["upstream key 1"], SECRETS["upstream key 2"]):
            upstream.script.append(
                Scripted(
                    status=401,
                    body={
                        "error": {
                            "message": f"Incorrect API key provided: {secret}.",
                            "type": "invalid_request_error",
                            "param": None,
                            "code": "invalid_api_key",
                        }
                    },
                )
            )
        resp = keep("upstream 401s", request("POST", url, chat, CLIENT))
        assert resp.status == 502  # both keys refused: out of service
        for key_id in ("k1", "k2"):  # an operator vouches for them again
            assert request("POST", f"{base}/admin/v1/keys/{key_id}/enable", None, ADMIN).status == 200
        failing = f"internal error for key {SECRETS['upstream key 2']}".encode()
        upstream.script.extend([Scripted(status=500, body=failing)] * 3)  # every attempt fails
        resp = keep("upstream 500", request("POST", url, chat, CLIENT))
        assert resp.status == 500 and b"internal error for key" in resp.body  # its text, scrubbed
        upstream.script.append(
            Scripted(
                status=400,
                body={
                    "error": {
                        "message": f"bad request (key {SECRETS['upstream key 1']})",
                        "type": "invalid_request_error",
                        "param": None,
                        "code": None,
                    }
                },
            )
        )
        resp = keep("upstream 400", request("POST", url, chat, CLIENT))
        assert resp.status == 400 and b"bad request (key" in resp.body
        assert not upstream.script  # every scripted answer was served
        keep(
            "wrong client key",
            request("POST", url, chat, {"Authorization": "Bearer " + SECRETS["admin key"]}),
        )
        keep("unknown model", request("POST", url, {**chat, "model": "nope"}, CLIENT))
        keep("bad json", request("POST", url, None, CLIENT, raw=b"{"))
        keep(
            "embeddings",
            request(
                "POST", base + "/v1/embeddings", {"model": "gpt-4o-mini", "input": "x"}, CLIENT
            ),
        )
        keep("models", request("GET", base + "/v1/models", None, CLIENT))
        for path in (
            "keys",
            "providers",
            "stats",
            "config",
            "usage?group_by=client,provider,key,model",
        ):
            resp = keep(f"admin {path}", request("GET", f"{base}/admin/v1/{path}", None, ADMIN))
            assert resp.status == 200, (path, resp.body)
        keep(
            "admin validate",
            request(
                "POST", base + "/admin/v1/config/validate", None, ADMIN, raw=config.read_bytes()
            ),
        )
        keep("admin wrong key", request("GET", base + "/admin/v1/keys", None, CLIENT))
        keep("metrics", request("GET", base + "/metrics"))
        keep("readyz", request("GET", base + "/readyz"))
    finally:
        # Stopping drains the sinks: every record is in the file and at the webhook after it.
        proc.send_signal(signal.SIGTERM)
        output, _ = proc.communicate(timeout=20)
        loop_thread.run(receiver.stop())
    assert proc.returncode == 0
    seen.append(("process output (logs, stdout sink)", output))
    seen.append(("file sink", sink_file.read_text()))
    seen.append(("webhook bodies", b"".join(receiver.bodies).decode()))
    seen.append(("webhook headers", "".join(receiver.headers)))
    logged = sink_file.read_text().count("\n")
    assert '"request_id"' in output and logged >= 10
    assert sum(len(orjson.loads(body)) for body in receiver.bodies) == logged
    leaks = [
        (what, name) for what, text in seen for name, secret in SECRETS.items() if secret in text
    ]
    assert leaks == []
    # The gateway did send the secrets where they belong: to the upstream.
    assert {r.bearer for r in upstream.received} == {
        SECRETS["upstream key 1"],
        SECRETS["upstream key 2"],
    }
    assert all(
        r.headers.get("X-Org-Token") == SECRETS["provider header"] for r in upstream.received
    )


def test_secret_repr_survives_logging_formatters() -> None:
    import logging

    from truckllm.config import Secret
    from truckllm.telemetry.log import JSONFormatter

    record = logging.LogRecord(
        "truckllm", logging.INFO, __file__, 1, "key %s", (Secret("sk-x-SECRET"),), None
    )
    record.key = Secret("sk-y-SECRET")
    assert "SECRET" not in JSONFormatter().format(record)
    assert asyncio  # the module is used by the receiver
