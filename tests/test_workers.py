"""``server.workers: N``: several processes on one port, each with its own app; signals reach them
all; a worker that dies is replaced. A real command, real processes, real HTTP."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from helpers import Response, request, wait_serving, wait_until

from truckllm.config import ConfigError, parse_config
from truckllm.testing.mock import MockUpstream
from truckllm.testing.serve import free_port

TRUCKLLM = shutil.which("truckllm", path=os.path.dirname(sys.executable)) or "truckllm"
CHAT = {"model": "gpt-4", "messages": [{"role": "user", "content": "hi"}]}


def config(upstream: MockUpstream, alias: str, workers: int = 2) -> str:
    return f"""
providers:
  - id: openai
    base_url: {upstream.url}
    keys: [{{secret: sk-1}}]
model_aliases:
  {alias}: openai:gpt-4
server:
  workers: {workers}
  reload_interval: 0
  admin_api_key: adm-workers
"""


def chat(port: int, model: str) -> Response:
    return request("POST", f"http://127.0.0.1:{port}/v1/chat/completions", {**CHAT, "model": model})


def started_pids(log: Path, n: int) -> list[int]:
    """The pids of the workers started so far, once there are ``n``."""

    def pids() -> list[int]:
        return [int(p) for p in re.findall(r"worker \d started \(pid (\d+)\)", log.read_text())]

    return wait_until(lambda: len(pids()) >= n and pids(), 15, f"{n} workers started")


@contextmanager
def alone(serving: int, pids: list[int]) -> Iterator[None]:
    """Only worker ``serving`` can accept on the shared port while the block runs: the others
    are stopped (SIGSTOP), so every new connection is its to take, whoever would win the race
    for it otherwise."""
    others = [p for p in pids if p != serving]
    for pid in others:
        os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        for pid in others:
            os.kill(pid, signal.SIGCONT)


def served_alone(port: int, model: str, serving: int, pids: list[int]) -> str:
    """The request-id prefix of worker ``serving``, which answers ``model`` on its own (waiting
    for it, e.g. for a reload to reach it or a new worker to start accepting)."""

    def answered() -> Response | None:
        resp = chat(port, model)
        return resp if resp.status == 200 else None

    with alone(serving, pids):
        first = wait_until(answered, 15, f"worker {serving} serving {model}", interval=0.05)
        again = chat(port, model)
    assert again.status == 200, again.body
    prefix: str = first.headers["x-request-id"][:16]
    assert again.headers["x-request-id"][:16] == prefix  # one app per process
    return prefix


def start_gateway(
    upstream: MockUpstream, tmp_path: Path
) -> tuple[subprocess.Popen[bytes], int, Path]:
    """``truckllm`` with 2 workers on a free port, serving; its process, port and log file."""
    cfg = tmp_path / "config.yaml"
    cfg.write_text(config(upstream, "gpt-4"))
    port = free_port()
    log = tmp_path / "out.log"
    with log.open("w") as out:
        proc = subprocess.Popen(
            [TRUCKLLM, "-config", str(cfg), "-listen", f"127.0.0.1:{port}"],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_serving(f"http://127.0.0.1:{port}/healthz", proc, timeout=20)
    except BaseException:
        proc.kill()
        raise
    return proc, port, log


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_workers_share_the_port_reload_on_sighup_replace_the_dead_and_stop_together(
    upstream: MockUpstream, tmp_path: Path
) -> None:
    proc, port, log = start_gateway(upstream, tmp_path)
    cfg = tmp_path / "config.yaml"
    try:
        # Each worker serves the port by itself, with its own app (its own request-id prefix).
        pids = started_pids(log, 2)
        assert len(pids) == 2
        first = {pid: served_alone(port, "gpt-4", pid, pids) for pid in pids}
        assert len(set(first.values())) == 2, first
        # The dashboard's overview and tail are one worker's records: they say whose.
        slots = set()
        for pid in pids:
            with alone(pid, pids):
                for page in ("overview", "requests"):
                    got = request(
                        "GET",
                        f"http://127.0.0.1:{port}/admin/v1/{page}",
                        None,
                        {"Authorization": "Bearer adm-workers"},
                    )
                    assert got.status == 200, got.body
                    worker = got.json()["worker"]
                    assert worker["pid"] == pid and worker["count"] == 2, worker
                    slots.add(worker["index"])
        assert slots == {0, 1}

        # SIGHUP reaches every worker: each of them serves the new alias, and not the old one.
        cfg.write_text(config(upstream, "smart"))
        proc.send_signal(signal.SIGHUP)
        for pid in pids:
            assert served_alone(port, "smart", pid, pids) == first[pid]
            with alone(pid, pids):
                assert chat(port, "gpt-4").status == 404

        # A worker that dies is replaced: the new one serves (the current config) alongside the
        # survivor, with an app of its own.
        os.kill(pids[0], signal.SIGKILL)
        pids = [pids[1], started_pids(log, 3)[2]]
        after = {pid: served_alone(port, "smart", pid, pids) for pid in pids}
        assert after[pids[0]] == first[pids[0]]
        assert after[pids[1]] not in first.values()
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            status = proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise
    assert status == 0, log.read_text()
    text = log.read_text()
    pids = [int(p) for p in re.findall(r"worker \d started \(pid (\d+)\)", text)]
    assert len(pids) == 3 and not any(alive(p) for p in pids)
    assert "restarting" in text and "Traceback" not in text


def test_a_burst_of_connections_is_spread_over_the_workers(
    upstream: MockUpstream, tmp_path: Path
) -> None:
    """20 connections opened at once (a client filling its pool) land on both workers, not on
    whichever woke first; each connection's worker is the pid the admin overview names."""
    proc, port, log = start_gateway(upstream, tmp_path)
    try:
        pids = started_pids(log, 2)
        for pid in pids:  # both accept by now
            served_alone(port, "gpt-4", pid, pids)
        socks = [socket.create_connection(("127.0.0.1", port)) for _ in range(20)]
        ask = (
            b"GET /admin/v1/overview HTTP/1.1\r\nHost: x\r\n"
            b"Authorization: Bearer adm-workers\r\n\r\n"
        )
        served: list[int] = []
        for sock in socks:
            with sock:
                sock.sendall(ask)
                reader = sock.makefile("rb")
                head = b""
                while not head.endswith(b"\r\n\r\n"):
                    head += reader.readline()
                length = int(re.search(rb"content-length: (\d+)", head, re.I).group(1))  # type: ignore[union-attr]
                served.append(json.loads(reader.read(length))["worker"]["pid"])
                reader.close()
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=20)
    counts = {pid: served.count(pid) for pid in pids}
    assert sum(counts.values()) == 20 and min(counts.values()) >= 6, counts


def test_workers_must_be_a_sane_count() -> None:
    base = "providers: [{id: p, base_url: 'http://x'}]\n"
    for bad in (0, -1, 1000):
        with pytest.raises(ConfigError) as exc:
            parse_config(base + f"server: {{workers: {bad}}}", "w.yaml", {})
        assert "w.yaml: server.workers: must be between 1 and 256" in exc.value.problems
    assert parse_config(base + "server: {workers: 4}", "w.yaml", {}).server.workers == 4
    assert parse_config(base, "w.yaml", {}).server.workers == 1
