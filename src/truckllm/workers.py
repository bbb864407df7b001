"""``server.workers: N``: N gateway processes serving one port.

The supervisor binds the listening socket once (so a port in use fails at once, and nothing else
can join the port the way ``SO_REUSEPORT`` would allow), then forks N workers that accept on it,
taking turns through a table of their open connections (:mod:`truckllm.http.acceptor`), so that a
burst of new connections is spread over them.
Each worker builds its own :class:`~truckllm.api.App` after the fork: its own event loop, upstream
session, runtime, reloader and telemetry; nothing is shared between processes except through a
shared state store (``storage.runtime.type: redis``), so without one each worker enforces limits
and keeps cooldowns on its own.

Signals: SIGTERM or SIGINT make every worker drain as one process would (stop accepting, finish
in-flight requests up to ``server.shutdown_timeout``) and the supervisor exits 0 once all are gone;
a second signal forces them. SIGHUP is passed on, so every worker reloads its configuration. A
worker that dies is replaced after a short pause; one that fails at start-up stops the lot (exit 1).
The supervisor never creates an event loop or a thread, which keeps ``fork`` safe.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import os
import signal
import socket
import sys
import time
from collections.abc import Callable

from truckllm.api import App
from truckllm.http.acceptor import Loads
from truckllm.process import set_worker
from truckllm.runner import STARTUP_FAILURE

log = logging.getLogger("truckllm.workers")

_SIGNALS = {signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGCHLD}
_RESPAWN_PAUSE = 1.0


def bind(host: str, port: int, backlog: int = 2048) -> socket.socket:
    """The listening socket every worker accepts on."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.create_server((host, port), family=family, backlog=backlog)
    sock.set_inheritable(True)
    return sock


def serve_workers(
    make_app: Callable[[], App], host: str, port: int, workers: int, grace: float
) -> int:
    """Run ``workers`` processes on ``host:port`` until SIGTERM/SIGINT; the exit status.
    ``grace`` is how long stopping workers may take before they are killed."""
    sock = bind(host, port)
    loads = Loads(workers)  # shared with the workers: each one's open connections
    # Frozen objects are never touched by the collector: the forked workers keep sharing their
    # pages with the supervisor instead of copying them on the first collection.
    gc.freeze()
    signal.pthread_sigmask(signal.SIG_BLOCK, _SIGNALS)
    children: dict[int, int] = {}  # pid -> slot
    pending: dict[int, float] = {}  # slot -> when to start it again
    stopping_since: float | None = None
    signals_seen = 0
    status = 0
    try:
        for slot in range(workers):
            children[_spawn(make_app, sock, loads, slot)] = slot
        log.info("serving on %s:%d with %d worker processes", host, port, workers)
        while children or (pending and stopping_since is None):
            info = signal.sigtimedwait(_SIGNALS, 0.5)
            sig = info.si_signo if info is not None else None
            if sig in (signal.SIGTERM, signal.SIGINT):
                signals_seen += 1
                stopping_since = stopping_since or time.monotonic()
                pending.clear()
                # The first signal drains; a second one forces the exit.
                _send(children, signal.SIGTERM if signals_seen == 1 else signal.SIGINT)
            elif sig == signal.SIGHUP:
                _send(children, signal.SIGHUP)
            for pid, code in _reap():
                if pid not in children:
                    continue
                slot = children.pop(pid)
                if stopping_since is not None:
                    continue
                if code == STARTUP_FAILURE:
                    log.error("worker %d (pid %d) failed to start: stopping", slot, pid)
                    status = 1
                    stopping_since = time.monotonic()
                    pending.clear()
                    _send(children, signal.SIGTERM)
                else:
                    log.error("worker %d (pid %d) exited with %d: restarting", slot, pid, code)
                    pending[slot] = time.monotonic() + _RESPAWN_PAUSE
            now = time.monotonic()
            for slot, when in list(pending.items()):
                if when <= now and stopping_since is None:
                    del pending[slot]
                    children[_spawn(make_app, sock, loads, slot)] = slot
            if stopping_since is not None and now - stopping_since > grace + 5:
                log.error("workers still running after %.0f s: killing them", grace + 5)
                _send(children, signal.SIGKILL)
                stopping_since = now - grace  # wait 5 s more for the kills to land
    finally:
        _send(children, signal.SIGKILL)
        for pid in list(children):
            _wait(pid)
        sock.close()
        signal.pthread_sigmask(signal.SIG_UNBLOCK, _SIGNALS)
    return status


def _spawn(make_app: Callable[[], App], sock: socket.socket, loads: Loads, slot: int) -> int:
    pid = os.fork()
    if pid:
        log.info("worker %d started (pid %d)", slot, pid)
        return pid
    code = 1
    try:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, _SIGNALS)
        set_worker(slot)
        code = _worker(make_app, sock, loads, slot)
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    except BaseException:
        log.exception("worker %d crashed", slot)
    finally:
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def _worker(make_app: Callable[[], App], sock: socket.socket, loads: Loads, slot: int) -> int:
    from truckllm.collector import Collector
    from truckllm.runner import (
        GatewayServer,
        freeze_startup_objects,
        raise_open_files_limit,
        run_async,
    )

    raise_open_files_limit()
    app = make_app()
    host, port = sock.getsockname()[:2]
    loads.counts[slot] = 0  # a replacement starts with no connections
    server = GatewayServer(
        app, host, port, sock=sock, loads=loads, slot=slot, collections=Collector()
    )
    freeze_startup_objects()
    run_async(server.serve())
    return 0 if server.started else STARTUP_FAILURE


def _send(children: dict[int, int], sig: signal.Signals) -> None:
    for pid in children:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)


def _reap() -> list[tuple[int, int]]:
    """(pid, exit status) of every child that has ended."""
    out: list[tuple[int, int]] = []
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return out
        if pid == 0:
            return out
        out.append((pid, os.waitstatus_to_exitcode(status)))


def _wait(pid: int) -> None:
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, 0)
