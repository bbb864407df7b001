"""The gateway served on a loopback port from a daemon thread, for tests, benchmarks and the
simulated upstreams. Not used by the serving path."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
import time
from collections.abc import Iterator

from truckllm.api import App
from truckllm.runner import GatewayServer


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        port: int = s.getsockname()[1]
        return port


class ServerThread:
    """The gateway on its own event loop in a daemon thread (tests, embedding). ``loop`` is
    "asyncio" or "uvloop"."""

    def __init__(
        self,
        app: App,
        host: str = "127.0.0.1",
        port: int | None = None,
        *,
        loop: str = "asyncio",
        keep_alive_timeout: float | None = None,
        shutdown_timeout: float = 2.0,
    ) -> None:
        self.app = app
        self.host = host
        self.port = port or free_port(host)
        self.server = GatewayServer(
            app,
            self.host,
            self.port,
            shutdown_timeout=shutdown_timeout,
            keep_alive_timeout=keep_alive_timeout,
            handle_signals=False,
        )
        self._loop_kind = loop
        self.loop: asyncio.AbstractEventLoop | None = None
        self._thread = threading.Thread(target=self._run, name=f"truckllm-{self.port}", daemon=True)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def _run(self) -> None:
        if self._loop_kind == "uvloop":
            import uvloop

            self.loop = uvloop.new_event_loop()
        else:
            self.loop = asyncio.new_event_loop()
        asyncio.set_event_loop(self.loop)
        try:
            self.loop.run_until_complete(self.server.serve())
        finally:
            self.loop.run_until_complete(self.loop.shutdown_asyncgens())
            self.loop.close()

    def start(self, timeout: float = 10.0) -> ServerThread:
        self._thread.start()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.server.started:
                return self
            if not self._thread.is_alive():
                break
            time.sleep(0.01)
        raise RuntimeError("the gateway did not start")

    def stop(self) -> None:
        loop = self.loop
        if loop is not None and self._thread.is_alive():
            with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
                loop.call_soon_threadsafe(self.server.exit)
        self._thread.join(10)


@contextlib.contextmanager
def running(app: App, host: str = "127.0.0.1") -> Iterator[ServerThread]:
    thread = ServerThread(app, host).start()
    try:
        yield thread
    finally:
        thread.stop()
