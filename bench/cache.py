"""The response cache's hit latency: a hit against an upstream call and against the gateway's
own path, over loopback, one request at a time.

Starts ``truckllm mock`` (answers of about ``--answer-bytes``, at once) and the gateway with
``cache: {enabled: true}`` (memory, metrics and request log off: the core), then times, with a
minimal keep-alive client on a raw socket, alternating in rounds:

* ``upstream``: the request straight to the mock (the fastest upstream there is);
* ``gateway, bypass``: through the gateway with ``Cache-Control: no-store`` (its own path plus
  the upstream call: the gateway's overhead is this less ``upstream``);
* ``gateway, hit``: the same request answered from the cache.

Target: a hit answers at p50 in under 0.5 ms for a 2 KB answer (``hit`` row, the whole round
trip as the client sees it): faster than any real upstream call (the mock answers from memory
on loopback, which no provider does; it is here to show the scale, not as the bar).

Usage::

    .venv/bin/python bench/cache.py [--requests 3000] [--rounds 3] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import socket
import tempfile
import time
from pathlib import Path
from typing import Any

from common import (
    HOST,
    default_python,
    free_port,
    pct,
    run_and_report,
    start,
    start_gateway,
    wait_http,
)

LOOPS = ("upstream", "gateway, bypass", "gateway, hit")
TARGET_P50_MS = 0.5


class Client:
    """One keep-alive connection; ``post`` returns the body."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection((HOST, port))
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = b""

    def post(self, request: bytes) -> tuple[bytes, bytes]:
        self.sock.sendall(request)
        while b"\r\n\r\n" not in self.buf:
            self.buf += self.sock.recv(65536)
        head, _, rest = self.buf.partition(b"\r\n\r\n")
        length = 0
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        while len(rest) < length:
            rest += self.sock.recv(65536)
        self.buf = rest[length:]
        return head, rest[:length]


def request_bytes(path: str, body: bytes, headers: dict[str, str]) -> bytes:
    lines = [f"POST {path} HTTP/1.1", f"Host: {HOST}", f"Content-Length: {len(body)}"]
    lines += ["Content-Type: application/json", *(f"{k}: {v}" for k, v in headers.items())]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def bench(args: argparse.Namespace) -> dict[str, Any]:
    python = default_python()
    with tempfile.TemporaryDirectory(prefix="truckllm-cache-bench-") as d:
        tmp = Path(d)
        words = max(int(args.answer_bytes / 8.4), 1)  # bytes a word, the JSON around included
        mock_port = free_port()
        mock = start(
            "mock",
            [python, "-m", "truckllm", "mock", "--listen", f"{HOST}:{mock_port}",
             "--reply-tokens", str(words)],
            mock_port,
            tmp,
        )  # fmt: skip
        wait_http(f"http://{HOST}:{mock_port}/v1/models")
        config = tmp / "gateway.yaml"
        config.write_text(
            f"""providers:
  - {{id: mock, base_url: "http://{HOST}:{mock_port}/v1", models: [m],
      keys: [{{id: k1, secret: sk-bench-1}}]}}
metrics: {{enabled: false}}
cache: {{enabled: true, type: memory}}
"""
        )
        gateway = start_gateway(python, config, tmp)
        try:
            return measure(mock_port, gateway.port, args)
        finally:
            for svc in (gateway, mock):
                if svc.proc is not None:
                    svc.proc.terminate()
                    svc.proc.wait(10)


def measure(mock_port: int, gateway_port: int, args: argparse.Namespace) -> dict[str, Any]:
    body = json.dumps(
        {"model": "m", "temperature": 0, "messages": [{"role": "user", "content": "hi"}]}
    ).encode()
    auth = {"Authorization": "Bearer sk-bench-1"}
    path = "/v1/chat/completions"
    clients = {
        "upstream": (Client(mock_port), request_bytes(path, body, auth)),
        "gateway, bypass": (
            Client(gateway_port),
            request_bytes(path, body, {"Cache-Control": "no-store"}),
        ),
        "gateway, hit": (Client(gateway_port), request_bytes(path, body, {})),
    }
    head, answer = clients["gateway, hit"][0].post(clients["gateway, hit"][1])  # the miss
    if b"200" not in head.split(b"\r\n")[0]:
        raise SystemExit(f"the gateway answered {head!r}")
    times: dict[str, list[float]] = {name: [] for name in LOOPS}
    order = list(LOOPS)
    for r in range(args.rounds):
        for name in order if r % 2 == 0 else order[::-1]:
            client, req = clients[name]
            for _ in range(200):  # warm up
                client.post(req)
            got = times[name]
            for _ in range(args.requests):
                t = time.perf_counter()
                h, _ = client.post(req)
                got.append(time.perf_counter() - t)
            if not h.startswith(b"HTTP/1.1 200"):
                raise SystemExit(f"{name}: answered {h[:40]!r}")
            if name == "gateway, hit" and b"x-truckllm-cache: hit" not in h.lower():
                raise SystemExit("the gateway did not answer from the cache")
    out: dict[str, Any] = {"answer_bytes": len(answer), "requests": args.requests * args.rounds}
    for name in LOOPS:
        v = times[name]
        out[name] = {p: pct(v, q) * 1000 for p, q in (("p50", 50), ("p90", 90), ("p99", 99))}
    return out


def report(result: dict[str, Any]) -> str:
    lines = [
        f"Answer: {result['answer_bytes']} bytes; {result['requests']} requests per row, one at "
        "a time on a keep-alive connection (ms, as the client sees them).",
        "",
        "| path | p50 | p90 | p99 |",
        "|---|---:|---:|---:|",
    ]
    for name in LOOPS:
        r = result[name]
        lines.append(f"| {name} | {r['p50']:.3f} | {r['p90']:.3f} | {r['p99']:.3f} |")
    hit, up = result["gateway, hit"]["p50"], result["upstream"]["p50"]
    own = result["gateway, bypass"]["p50"] - up
    lines += [
        "",
        f"Gateway's own overhead at p50 (bypass less upstream): {own:.3f} ms. "
        f"A hit at p50: {hit:.3f} ms, {hit - up:+.3f} ms against the upstream call. "
        f"Target: hit p50 < {TARGET_P50_MS} ms: {'met' if hit < TARGET_P50_MS else 'NOT met'}.",
    ]
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--requests", type=int, default=3000, help="per path and round")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--answer-bytes", type=int, default=2048)
    p.add_argument("--json", type=Path, help="write the results here too")
    return run_and_report(bench, report, p.parse_args())


if __name__ == "__main__":
    raise SystemExit(main())
