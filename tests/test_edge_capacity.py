"""The edge at capacity, over real loopback sockets on both loops: requests beyond
``max_in_flight`` answered 503 with ``retry-after`` and counted; accepts that fail for lack of
descriptors logged and counted (a server process with a small descriptor limit, flooded)."""

from __future__ import annotations

import socket
import subprocess
import sys
import textwrap
import threading
from collections.abc import Callable

import pytest
from helpers import wait_until
from test_http_server import Served, TinyApp, exchange, get, read_response, serve

from truckllm.config import ConfigError, parse_config
from truckllm.http.server import EdgeLimits
from truckllm.providers import provider_registry
from truckllm.runner import edge_limits

__all__ = ["serve"]  # the fixture, imported for its use by name


def test_requests_over_max_in_flight_get_503_with_retry_after(
    serve: Callable[..., Served],
) -> None:
    app = TinyApp()
    srv = serve(app, limits=EdgeLimits(max_in_flight=2))
    busy = [srv.connect() for _ in range(2)]
    for sock in busy:
        sock.sendall(get("/gated"))
    wait_until(lambda: app.events.count("gated") == 2)
    extra = srv.connect()
    (resp,) = exchange(extra, get("/echo"))
    assert resp.status == 503
    assert resp.headers["retry-after"] == "1"
    assert resp.headers["connection"] == "close"
    assert resp.json()["error"]["type"] == "overloaded_error"
    assert srv.server.stats.overloaded == 1
    srv.loop.call_soon_threadsafe(app.release.set)
    for sock in busy:
        assert read_response(sock.makefile("rb")).body == b"released"
    # once their tasks are done (the app's work after the response counts too), the next is served
    wait_until(lambda: not srv.server.tasks)
    (resp,) = exchange(busy[0], get("/echo"))
    assert resp.status == 200
    for sock in (*busy, extra):
        sock.close()


SERVER = textwrap.dedent(
    """
    import asyncio, logging, resource, sys
    from truckllm.http.server import EdgeLimits, HTTPServer

    resource.setrlimit(resource.RLIMIT_NOFILE, (FDS, FDS))
    logging.basicConfig(stream=sys.stderr, level=logging.INFO, format="%(message)s")
    server = None

    async def app(scope, receive, send):
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        body = str(server.stats.accept_errors).encode()
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})

    async def main():
        global server
        server = HTTPServer(app, limits=EdgeLimits(*[30.0] * 5))
        await server.startup()
        await server.listen("127.0.0.1", 0)
        print(server.sockets[0].getsockname()[1], flush=True)
        await asyncio.Event().wait()

    if sys.argv[1] == "uvloop":
        import uvloop
        uvloop.run(main())
    else:
        asyncio.run(main())
    """
).replace("FDS", "48")


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_accepts_failing_for_lack_of_descriptors_are_logged_and_counted(loop: str) -> None:
    with subprocess.Popen(
        [sys.executable, "-c", SERVER, loop],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    ) as proc:
        lines: list[str] = []
        logged = threading.Event()

        def watch_log() -> None:
            assert proc.stderr is not None
            for line in proc.stderr:
                lines.append(line)
                if "cannot accept client connections" in line:
                    logged.set()

        watcher = threading.Thread(target=watch_log, daemon=True)
        watcher.start()
        try:
            flood_until_logged(proc, logged, lines)
        finally:
            proc.kill()
            proc.wait(10)
            watcher.join(10)


def flood_until_logged(
    proc: subprocess.Popen[str], logged: threading.Event, lines: list[str]
) -> None:
    assert proc.stdout is not None
    port = int(proc.stdout.readline())
    flood: list[socket.socket] = []
    try:
        for _ in range(80):  # well over what 48 descriptors hold
            flood.append(socket.create_connection(("127.0.0.1", port), timeout=10))
        assert logged.wait(20), "".join(lines)
    finally:
        for sock in flood:
            sock.close()

    def count() -> int:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            try:
                (resp,) = exchange(sock, get("/"))
            except AssertionError as closed:  # still at the limit: libuv shut it at once
                raise ConnectionResetError(str(closed)) from closed
            return int(resp.body)

    assert wait_until(count, 20, "the server to accept again", ignore=(OSError,)) >= 1
    assert not any("Traceback" in line for line in lines), "".join(lines)


def test_max_in_flight_is_configured_and_validated() -> None:
    providers = "providers: [{id: openai, keys: [{secret: sk-1}]}]\n"
    names = provider_registry().names()
    cfg = parse_config("server: {max_in_flight: 5}\n" + providers, "<test>", {}, names)
    assert edge_limits(cfg).max_in_flight == 5
    with pytest.raises(ConfigError, match=r"server\.max_in_flight: must not be negative"):
        parse_config("server: {max_in_flight: -1}\n" + providers, "<test>", {}, names)
