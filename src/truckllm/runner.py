"""Run the ASGI app on the lean HTTP/1.1 server (:mod:`truckllm.http.server`), on uvloop where it
is installed, in the foreground or in a thread."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import resource
import signal
import socket
import sys
import threading
from collections.abc import Coroutine, Iterator
from typing import Any

from truckllm.api import App
from truckllm.collector import Collector
from truckllm.config import Config, parse_listen
from truckllm.http.acceptor import Loads
from truckllm.http.forwarded import parse_networks
from truckllm.http.server import EdgeLimits, HTTPServer

log = logging.getLogger("truckllm.http")

STARTUP_FAILURE = 3  # the exit status when the app's start-up fails (workers.py relies on it)
MAX_OPEN_FILES = 1 << 20  # the soft descriptor limit is raised to the hard one, up to this
STREAM_CUT_MARGIN_S = 0.5  # streams still open this long before the drain deadline are ended


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
        loads: Loads | None = None,
        slot: int = 0,
        shutdown_timeout: float | None = None,
        keep_alive_timeout: float | None = None,
        handle_signals: bool = True,
        collections: Collector | None = None,
    ) -> None:
        self.app = app
        self.host = host
        self.port = port
        self.sock = sock
        self.loads, self.slot = loads, slot  # with sock: the workers' shared loads, this one's
        self.shutdown_timeout = shutdown_timeout
        self.keep_alive_timeout = keep_alive_timeout
        self.handle_signals = handle_signals
        self.collections = collections
        self.started = False
        self.http: HTTPServer | None = None
        self._exit: asyncio.Event | None = None
        self._exit_requested = False
        self._hurry: asyncio.Event | None = None  # a second signal during the drain delay
        self._delaying = False

    async def serve(self) -> None:
        self._exit = asyncio.Event()
        self._hurry = asyncio.Event()
        if self._exit_requested:
            self._exit.set()
        self.http = http = HTTPServer(
            self.app, limits=edge_limits(self.app.config, self.keep_alive_timeout)
        )
        delay = self.app.config.server.drain_delay  # read at start, as shutdown_timeout
        with self._signals():
            if not await http.startup():
                log.error("application start-up failed: exiting")
                return
            try:
                await http.listen(
                    self.host, self.port, sock=self.sock, shared=self.loads, slot=self.slot
                )
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
            await self._drain_delay(http, delay)
            timeout = self.shutdown_timeout
            if timeout is None:
                timeout = self.app.config.server.shutdown_timeout
            # Streams that would outlive the drain end a little before it, with an error event,
            # so that clients see an error rather than a cut connection.
            cut = asyncio.get_running_loop().call_later(
                max(timeout - min(STREAM_CUT_MARGIN_S, timeout / 10), 0), self.app.cut_streams
            )
            try:
                await http.shutdown(timeout)
            finally:
                cut.cancel()

    def exit(self) -> None:
        """Begin a graceful shutdown; called again, force it. Call on the server's loop."""
        self.app.draining = True  # /readyz says so while connections finish
        if self._exit is None:
            self._exit_requested = True
        elif not self._exit.is_set():
            self._exit.set()
        elif self._hurry is not None and self._delaying:
            self._hurry.set()  # during server.drain_delay: end it, then drain as usual
        elif self.http is not None:
            self.http.force_exit()

    async def _drain_delay(self, http: HTTPServer, delay: float) -> None:
        """``server.drain_delay``: /readyz answers 503 already; go on accepting and serving for
        that long, every answer closing its connection, so that load balancers that poll /readyz
        (or the Kubernetes endpoints controller) stop sending here while the listener is still
        open: no client is refused and no request meets a keep-alive connection being closed.
        A second signal ends the wait (the drain goes on as usual; a third forces the exit)."""
        if delay <= 0 or self._hurry is None:
            return
        http.keep_alive_off = True
        log.info(
            "draining: /readyz answers 503; serving %.3g s more (server.drain_delay) before "
            "the listener closes",
            delay,
        )
        self._delaying = True
        try:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._hurry.wait(), delay)
        finally:
            self._delaying = False

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


def edge_limits(config: Config, keep_alive_timeout: float | None = None) -> EdgeLimits:
    """The HTTP server's deadlines and caps from ``server`` (read at start: *restart*)."""
    server = config.server
    t = server.timeouts
    return EdgeLimits(
        headers_timeout=t.headers,
        body_timeout=t.body,
        body_total_timeout=t.body_total,
        send_timeout=t.send,
        keep_alive_timeout=t.keep_alive if keep_alive_timeout is None else keep_alive_timeout,
        max_header_count=server.max_header_count,
        max_connections=server.max_connections,
        max_in_flight=server.max_in_flight,
        trusted_proxies=parse_networks(server.trusted_proxies),
    )


def raise_open_files_limit() -> int:
    """Raise the soft limit on open descriptors to the hard one (a connection costs one; the
    usual soft limit, 1,024, is reached by a thousand slow clients); the limit in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = MAX_OPEN_FILES if hard == resource.RLIM_INFINITY else min(hard, MAX_OPEN_FILES)
    if soft == resource.RLIM_INFINITY or soft >= target:
        return soft
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    except (ValueError, OSError) as exc:
        log.warning("cannot raise the open files limit from %d to %d: %s", soft, target, exc)
        return soft
    log.info("open files limit raised from %d to %d", soft, target)
    return target


def serve(app: App, listen: str | None = None) -> None:
    """Serve in the foreground until SIGINT/SIGTERM; exits with status 3 if start-up fails."""
    host, port = parse_listen(listen or app.config.server.listen)
    raise_open_files_limit()
    server = GatewayServer(app, host, port, collections=Collector())
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
