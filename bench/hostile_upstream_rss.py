"""Peak memory of the gateway in front of hostile upstreams.

Starts a hostile upstream (in this process, on its own event loop thread) and a gateway
(``server.max_response_bytes`` = ``--cap-mb``) with one provider per case, then for each case sends
``--concurrency`` non-streamed chat requests at once, reads whatever comes back, and records the
gateway's peak resident set (``VmHWM``, reset through ``/proc/<pid>/clear_refs`` before each case)
against its resident set just before. The cases:

- ``large``: a valid completion of ``--body-mb`` MB, usage last, with its ``Content-Length``: relayed
  to the client as it arrives (passthrough), never held whole.
- ``endless-chunked``: a chunked 200 that never ends: relayed until it passes the cap, then cut.
- ``length-over-cap``: a ``Content-Length`` of 1 GiB: refused before a byte of body is read (502).
- ``gzip-bomb``: ``Content-Encoding: gzip`` of 1 GiB of zeros (about 1 MB on the wire), although
  identity was asked for: inflated in bounded steps, relayed, cut at the cap.
- ``endless-error``: a 500 whose HTML body never ends: its first 256 KiB read, the rest dropped.
- ``endless-headers``: header lines that never end: refused past 256 KiB of head (502).
- ``slow-drip``: a body sent one byte every 50 ms: cut at the provider's ``timeout.total`` (504).

The claim it checks: whatever the upstream does, the peak stays within ``max_response_bytes`` plus
a fixed margin (``--margin-mb``), and for relayed bodies far below the cap.

    python bench/hostile_upstream_rss.py [--cap-mb 256] [--body-mb 128] [--concurrency 4]
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import tempfile
import threading
import time
import zlib
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from common import HOST, BenchError, default_python, proc_status_kb, run_and_report, start_gateway

MiB = 1024 * 1024
PIECE = 256 * 1024
Writer = asyncio.StreamWriter


async def _write(w: Writer, data: bytes) -> None:
    w.write(data)
    await w.drain()


def _completion_parts(size: int) -> tuple[bytes, bytes]:
    head = b'{"id":"c","object":"chat.completion","model":"m","choices":[{"index":0,'
    head += b'"message":{"role":"assistant","content":"'
    tail = b'"},"finish_reason":"stop"}],"usage":{"prompt_tokens":5,"completion_tokens":7}}'
    return head, tail


async def large(w: Writer, size: int) -> None:
    head, tail = _completion_parts(size)
    fill = size - len(head) - len(tail)
    await _write(w, b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n")
    await _write(w, b"Content-Length: %d\r\n\r\n" % size + head)
    piece = b"x" * PIECE
    while fill > 0:
        await _write(w, piece[: min(fill, PIECE)])
        fill -= PIECE
    await _write(w, tail)


async def endless_chunked(w: Writer, size: int) -> None:
    await _write(w, b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n")
    await _write(w, b"Transfer-Encoding: chunked\r\n\r\n")
    chunk = b"%x\r\n%b\r\n" % (PIECE, b"x" * PIECE)
    while True:
        await _write(w, chunk)


async def length_over_cap(w: Writer, size: int) -> None:
    await _write(w, b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n")
    await _write(w, b"Content-Length: %d\r\n\r\n" % (1 << 30))
    piece = b"x" * PIECE
    while True:
        await _write(w, piece)


BOMB: list[bytes] = []


def gzip_bomb_bytes() -> bytes:
    """1 GiB of zeros, gzip-compressed (about 1 MB), made once."""
    if not BOMB:
        packer = zlib.compressobj(9, zlib.DEFLATED, 31)
        zeros = bytes(16 * MiB)
        parts = [packer.compress(zeros) for _ in range(64)]
        BOMB.append(b"".join(parts) + packer.flush())
    return BOMB[0]


async def gzip_bomb(w: Writer, size: int) -> None:
    bomb = gzip_bomb_bytes()
    await _write(w, b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n")
    await _write(w, b"Content-Encoding: gzip\r\nContent-Length: %d\r\n\r\n" % len(bomb))
    await _write(w, bomb)


async def endless_error(w: Writer, size: int) -> None:
    await _write(w, b"HTTP/1.1 500 Internal Server Error\r\nContent-Type: text/html\r\n")
    await _write(w, b"Transfer-Encoding: chunked\r\n\r\n")
    chunk = b"%x\r\n%b\r\n" % (PIECE, b"<p>oops</p>" * (PIECE // 11) + b"x" * (PIECE % 11))
    while True:
        await _write(w, chunk)


async def endless_headers(w: Writer, size: int) -> None:
    await _write(w, b"HTTP/1.1 200 OK\r\n")
    line = b"x-filler: " + b"y" * 1000 + b"\r\n"
    while True:
        await _write(w, line * 64)


async def slow_drip(w: Writer, size: int) -> None:
    await _write(w, b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n")
    await _write(w, b"Content-Length: 1000000\r\n\r\n")
    while True:
        await _write(w, b"x")
        await asyncio.sleep(0.05)


CASES: dict[str, Callable[[Writer, int], Awaitable[None]]] = {
    "large": large,
    "endless-chunked": endless_chunked,
    "length-over-cap": length_over_cap,
    "gzip-bomb": gzip_bomb,
    "endless-error": endless_error,
    "endless-headers": endless_headers,
    "slow-drip": slow_drip,
}


class HostileUpstream:
    """Serves ``/<case>/v1/...``: reads the request, then behaves as the case says."""

    def __init__(self, body_size: int) -> None:
        self.body_size = body_size
        self.loop = asyncio.new_event_loop()
        self.port = 0
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> None:
        self._thread.start()
        if not self._ready.wait(10):
            raise BenchError("the hostile upstream did not start")

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        server = self.loop.run_until_complete(asyncio.start_server(self._serve, HOST, 0))
        self.port = server.sockets[0].getsockname()[1]
        self._ready.set()
        self.loop.run_forever()

    async def _serve(self, reader: asyncio.StreamReader, writer: Writer) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":", 1)[1])
                await reader.readexactly(length)
                case = head.split(b" ", 2)[1].split(b"/")[1].decode()
                await CASES[case](writer, self.body_size)
        except (OSError, asyncio.IncompleteReadError, ValueError):
            pass
        finally:
            writer.close()

    def stop(self) -> None:
        async def shut() -> None:
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            self.loop.stop()

        asyncio.run_coroutine_threadsafe(shut(), self.loop)
        self._thread.join(10)


def gateway_yaml(upstream_port: int, cap: int) -> str:
    lines = [
        f"server: {{max_response_bytes: {cap}, timeouts: {{read: 10}}}}",
        "metrics: {enabled: false}",
        "retry: {max_attempts: 1}",
        "providers:",
    ]
    aliases = []
    for i, case in enumerate(CASES):
        timeout = "{read: 5, total: 3}" if case == "slow-drip" else "{read: 10}"
        lines.append(
            f"  - {{id: p{i}, type: openai, base_url: 'http://{HOST}:{upstream_port}/{case}/v1',"
            f" keys: [{{id: k{i}, secret: sk}}], timeout: {timeout}}}"
        )
        aliases.append(f"'{case}': 'p{i}:m'")
    lines.append("model_aliases: {" + ", ".join(aliases) + "}")
    return "\n".join(lines) + "\n"


def one_request(port: int, case: str) -> tuple[int, int]:
    """(status, body bytes received); status 0 when the connection was cut mid-body."""
    conn = http.client.HTTPConnection(HOST, port, timeout=120)
    body = b'{"model":"%s","messages":[{"role":"user","content":"hi"}]}' % case.encode()
    conn.request("POST", "/v1/chat/completions", body, {"Content-Type": "application/json"})
    resp = conn.getresponse()
    got = 0
    try:
        while data := resp.read(MiB):
            got += len(data)
    except (http.client.IncompleteRead, ConnectionError) as exc:
        got += len(getattr(exc, "partial", b""))
        return 0, got
    finally:
        conn.close()
    return resp.status, got


def run_case(pid: int, port: int, case: str, concurrency: int) -> dict[str, Any]:
    Path(f"/proc/{pid}/clear_refs").write_text("5")  # VmHWM := VmRSS
    before = proc_status_kb(pid, "VmRSS")
    t0 = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        results = list(pool.map(lambda _: one_request(port, case), range(concurrency)))
    seconds = time.perf_counter() - t0
    peak = proc_status_kb(pid, "VmHWM")
    return {
        "case": case,
        "statuses": sorted({s for s, _ in results}),
        "mb_received": sum(n for _, n in results) / MiB,
        "rss_before_kb": before,
        "peak_kb": peak,
        "seconds": seconds,
    }


def bench(args: argparse.Namespace) -> dict[str, Any]:
    tmp = Path(tempfile.mkdtemp(prefix="truckllm-hostile-"))
    gzip_bomb_bytes()
    upstream = HostileUpstream(args.body_mb * MiB)
    upstream.start()
    config = tmp / "gateway.yaml"
    config.write_text(gateway_yaml(upstream.port, args.cap_mb * MiB))
    cases = args.only or list(CASES)
    rows = []
    try:
        gw = start_gateway(args.python, config, tmp)
        try:
            assert gw.proc is not None
            one_request(gw.port, "length-over-cap")  # warm: imports, first connections
            for case in cases:
                rows.append(run_case(gw.proc.pid, gw.port, case, args.concurrency))
        finally:
            gw.stop()
    finally:
        upstream.stop()
    worst = max((r["peak_kb"] - r["rss_before_kb"]) / 1024 for r in rows)
    return {
        "cap_mb": args.cap_mb,
        "body_mb": args.body_mb,
        "concurrency": args.concurrency,
        "margin_mb": args.margin_mb,
        "cases": rows,
        "worst_growth_mb": worst,
        "within": worst <= args.cap_mb + args.margin_mb,
    }


def report(r: dict[str, Any]) -> str:
    out = [
        f"`max_response_bytes` {r['cap_mb']} MiB, {r['concurrency']} requests at once per case, "
        f"large body {r['body_mb']} MiB",
        "",
        "| case | client saw | MiB received | RSS before | peak RSS | growth | seconds |",
        "|---|---|---|---|---|---|---|",
    ]
    for c in r["cases"]:
        statuses = ", ".join("cut" if s == 0 else str(s) for s in c["statuses"])
        growth = (c["peak_kb"] - c["rss_before_kb"]) / 1024
        out.append(
            f"| {c['case']} | {statuses} | {c['mb_received']:.0f} "
            f"| {c['rss_before_kb'] / 1024:.0f} MiB | {c['peak_kb'] / 1024:.0f} MiB "
            f"| {growth:.0f} MiB | {c['seconds']:.1f} |"
        )
    verdict = "within" if r["within"] else "NOT within"
    out += [
        "",
        f"Worst growth {r['worst_growth_mb']:.0f} MiB: {verdict} `max_response_bytes` + "
        f"{r['margin_mb']} MiB.",
    ]
    return "\n".join(out)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cap-mb", type=int, default=256)
    parser.add_argument("--body-mb", type=int, default=128)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--margin-mb", type=int, default=32)
    parser.add_argument("--only", action="append", choices=list(CASES))
    parser.add_argument("--python", default=default_python())
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    status = run_and_report(bench, report, args)
    if status == 0 and args.json is not None:  # the verdict as the exit status, too
        import orjson

        return 0 if orjson.loads(args.json.read_bytes())["within"] else 1
    return status


if __name__ == "__main__":
    raise SystemExit(main())
