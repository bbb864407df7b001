"""Server CPU per new connection on uvloop: libuv's own accept loop (``create_server``, what the
gateway uses) against ``accept()`` done in Python (``add_reader``, ``sock.accept``,
``connect_accepted_socket``), the path an exact count of accepts failing with ``EMFILE`` would need
(libuv's accept loop closes such connections itself and reports nothing: see docs/operations.md).

Two client processes open a connection, send a byte, read the answer and close, as fast as they
can, for ``--seconds``; the server's CPU time (user + system, ``/proc/<pid>/stat``) over the
connections it served is the figure.

    python bench/accept_path.py [--seconds 4] [--rounds 2]
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import socket
import time
from pathlib import Path
from typing import Any

import uvloop


class _Answer(asyncio.Protocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: Any = transport

    def data_received(self, data: bytes) -> None:
        self.transport.write(b"x")
        self.transport.close()


async def _serve(mode: str, sock: socket.socket) -> None:
    loop = asyncio.get_running_loop()
    if mode == "libuv":
        await loop.create_server(_Answer, sock=sock)
    else:
        sock.setblocking(False)
        tasks: set[asyncio.Task[Any]] = set()

        def on_readable() -> None:
            for _ in range(64):
                try:
                    conn, _ = sock.accept()
                except BlockingIOError:
                    return
                except OSError:  # EMFILE would be seen (and counted) here
                    return
                task = loop.create_task(loop.connect_accepted_socket(_Answer, conn))
                tasks.add(task)
                task.add_done_callback(tasks.discard)

        loop.add_reader(sock.fileno(), on_readable)
    await asyncio.Event().wait()


def _server(mode: str, sock: socket.socket) -> None:
    uvloop.run(_serve(mode, sock))


def _client(port: int, seconds: float, out: Any) -> None:
    done = 0
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        with socket.create_connection(("127.0.0.1", port)) as s:
            s.sendall(b"a")
            s.recv(1)
        done += 1
    out.put(done)


def _cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def one(mode: str, seconds: float) -> tuple[float, float]:
    """(connections per second, server CPU µs per connection)."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(1024)
    port = sock.getsockname()[1]
    server = multiprocessing.Process(target=_server, args=(mode, sock))
    server.start()
    assert server.pid is not None
    out: Any = multiprocessing.Queue()
    clients = [multiprocessing.Process(target=_client, args=(port, seconds, out)) for _ in range(2)]
    for c in clients:
        c.start()
    for c in clients:
        c.join()
    total = out.get() + out.get()
    cpu = _cpu_s(server.pid)
    server.kill()
    server.join()
    sock.close()
    return total / seconds, cpu * 1e6 / max(total, 1)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    print("| accept path | round | connections/s | server CPU per connection |")
    print("|---|---:|---:|---:|")
    for r in range(1, args.rounds + 1):
        for mode in ("libuv", "python"):
            rate, cpu_us = one(mode, args.seconds)
            print(f"| {mode} | {r} | {rate:,.0f} | {cpu_us:.0f} µs |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
