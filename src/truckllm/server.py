"""Run the ASGI app on the lean HTTP/1.1 server (:mod:`truckllm.http.server`), on uvloop where it
is installed, in the foreground or in a thread."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import signal
import socket
import sys
import threading
import time
from collections.abc import Coroutine, Iterator
from typing import Any

from truckllm.api import App
from truckllm.config import parse_listen
from truckllm.http.server import HTTPServer

log = logging.getLogger("truckllm.http")

STARTUP_FAILURE = 3  # the exit status when the app's start-up fails (workers.py relies on it)
KEEP_ALIVE_TIMEOUT = 75.0
FULL_COLLECTION_INTERVAL = 15.0  # how often the oldest generation is counted
FULL_COLLECTION_MAX_INTERVAL = 600.0  # a full collection at least this often
# Young generations: a collection per 5,000 tracked objects (Python: 700), the middle one every
# 20 young ones (Python: 10). With 1,000 streams open, every waiting stream holds a few young
# objects (its future, coroutines); at Python's thresholds the young collections kept finding
# them alive and promoting them: 250 ms of collections in a 13 s run, pauses up to 20 ms every
# second. At these, 66 ms, and the middle generation's pauses stay under 2 ms (gc.callbacks).
YOUNG_THRESHOLD = 5_000
MIDDLE_THRESHOLD = 20


class FullCollections:
    """Full garbage collections (generation 2) when the oldest generation has grown, checked on
    a timer, instead of by Python's allocation count.

    Python's own rule runs a full collection whenever the objects that survived into the oldest
    generation since the last one exceed a quarter of it, counting objects that have died since.
    Under many open streams every chunk leaves a few short-lived waiting objects (a future, a
    coroutine) that outlive the young collections and die a moment later: the rule fired every
    1-2 s, and each full collection stalled every stream for 25-135 ms. Here every ``interval``
    seconds a check counts the objects the oldest generation actually holds: a full collection
    runs only when that grew by a quarter (and ``slack`` objects) since the last one, or
    ``max_interval`` seconds have passed. The gateway's request and connection paths leave no
    reference cycles (closed connections and finished requests are freed by reference
    counting), so in steady state the oldest generation stays flat and full collections are
    rare; cyclic garbage from elsewhere still grows it and is collected. The young generations
    run at higher thresholds (``YOUNG_THRESHOLD``, ``MIDDLE_THRESHOLD``) for the same reason.
    Process-wide: used by the foreground server, each worker and ``truckllm mock``, never by
    embedded or test servers."""

    def __init__(
        self,
        interval: float = FULL_COLLECTION_INTERVAL,
        max_interval: float = FULL_COLLECTION_MAX_INTERVAL,
        slack: int = 10_000,
    ) -> None:
        self.interval = interval
        self.max_interval = max_interval
        self.slack = slack
        self.collections = 0  # full collections this has run
        self._baseline = 0  # objects in the oldest generation after the last full collection
        self._last = 0.0
        self._saved: tuple[int, int, int] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def start(self) -> None:
        self._loop = loop = asyncio.get_running_loop()
        self._saved = gc.get_threshold()
        gc.set_threshold(YOUNG_THRESHOLD, MIDDLE_THRESHOLD, 1 << 30)  # generation 2: _tick
        self._baseline = len(gc.get_objects(2))
        self._last = loop.time()
        self._timer = loop.call_later(self.interval, self._tick)

    def _tick(self) -> None:
        loop = self._loop
        assert loop is not None
        now = loop.time()
        if gc.get_count()[2] > 0:  # generation-1 collections since the last full one
            held = len(gc.get_objects(2))
            grown = held > self._baseline + self._baseline // 4 + self.slack
            if grown or now - self._last >= self.max_interval:
                gc.collect(2)
                self.collections += 1
                self._baseline = len(gc.get_objects(2))
                self._last = now
        self._timer = loop.call_later(self.interval, self._tick)

    def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._saved is not None:
            gc.set_threshold(*self._saved)
            self._saved = None


class GatewayServer:
    """The gateway's app on :class:`HTTPServer`, with the gateway's signals. SIGINT/SIGTERM drain:
    stop accepting, let in-flight requests and streams finish up to ``server.shutdown_timeout``,
    flush, exit 0 (a second signal forces the exit). SIGHUP reloads the configuration file.

    ``serve()`` returns once the server has stopped; ``started`` tells whether it ever served
    (False: the app's start-up failed)."""

    def __init__(
        self,
        app: App,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        sock: socket.socket | None = None,
        shutdown_timeout: float | None = None,
        keep_alive_timeout: float = KEEP_ALIVE_TIMEOUT,
        handle_signals: bool = True,
        collections: FullCollections | None = None,
    ) -> None:
        self.app = app
        self.host = host
        self.port = port
        self.sock = sock
        self.shutdown_timeout = shutdown_timeout
        self.keep_alive_timeout = keep_alive_timeout
        self.handle_signals = handle_signals
        self.collections = collections
        self.started = False
        self.http: HTTPServer | None = None
        self._exit: asyncio.Event | None = None
        self._exit_requested = False

    async def serve(self) -> None:
        self._exit = asyncio.Event()
        if self._exit_requested:
            self._exit.set()
        self.http = http = HTTPServer(self.app, keep_alive_timeout=self.keep_alive_timeout)
        with self._signals():
            if not await http.startup():
                log.error("application start-up failed: exiting")
                return
            try:
                await http.listen(self.host, self.port, sock=self.sock)
            except OSError as exc:
                log.error("cannot listen on %s:%d: %s", self.host, self.port, exc)
                await http.shutdown(0)  # the app's lifespan shutdown: flush, close
                raise SystemExit(1) from None
            self.started = True
            sockets = http.sockets
            if sockets:
                addr = sockets[0].getsockname()
                self.host, self.port = addr[0], addr[1]
            log.info("listening on http://%s:%d", self.host, self.port)
            if self.collections is not None:
                self.collections.start()
            try:
                await self._exit.wait()
            finally:
                if self.collections is not None:
                    self.collections.stop()
            timeout = self.shutdown_timeout
            if timeout is None:
                timeout = self.app.config.server.shutdown_timeout
            await http.shutdown(timeout)

    def exit(self) -> None:
        """Begin a graceful shutdown; called again, force it. Call on the server's loop."""
        self.app.draining = True  # /readyz says so while connections finish
        if self._exit is None:
            self._exit_requested = True
        elif not self._exit.is_set():
            self._exit.set()
        elif self.http is not None:
            self.http.force_exit()

    def handle_exit(self, sig: int, frame: object = None) -> None:
        self.exit()

    def _reload(self) -> None:
        app = self.app
        if app.reloader is not None:
            app.reloader.request("sighup")

    @contextlib.contextmanager
    def _signals(self) -> Iterator[None]:
        if not self.handle_signals or threading.current_thread() is not threading.main_thread():
            yield
            return
        loop = asyncio.get_running_loop()
        signals = (signal.SIGINT, signal.SIGTERM)
        for sig in signals:
            loop.add_signal_handler(sig, self.handle_exit, sig, None)
        loop.add_signal_handler(signal.SIGHUP, self._reload)
        try:
            yield
        finally:
            for sig in (*signals, signal.SIGHUP):
                loop.remove_signal_handler(sig)


def serve(app: App, listen: str | None = None) -> None:
    """Serve in the foreground until SIGINT/SIGTERM; exits with status 3 if start-up fails."""
    host, port = parse_listen(listen or app.config.server.listen)
    server = GatewayServer(app, host, port, collections=FullCollections())
    freeze_startup_objects()
    run_async(server.serve())
    if not server.started:
        sys.exit(STARTUP_FAILURE)


def freeze_startup_objects() -> None:
    """Move everything alive now (modules, classes, the configuration: ~40,000 objects) out of
    the garbage collector's reach. A full collection then scans only what serving created: with
    1,000 open streams its median pause went from about 75 ms to about 40 ms, and a pause stalls
    every stream. Call once, just before serving."""
    gc.collect()
    gc.freeze()


def run_async(main: Coroutine[Any, Any, None]) -> None:
    """Run a coroutine on uvloop where it is installed, else on asyncio's loop."""
    try:
        import uvloop
    except ImportError:
        asyncio.run(main)
    else:
        uvloop.run(main)


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
        keep_alive_timeout: float = KEEP_ALIVE_TIMEOUT,
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
