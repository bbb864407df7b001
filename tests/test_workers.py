"""``server.workers: N``: several processes on one port, each with its own app; signals reach them
all; a worker that dies is replaced. A real command, real processes, real HTTP."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import request

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
"""


def worker_ids(port: int, model: str, n: int) -> list[str]:
    """The per-process request-id prefix of ``n`` requests, each on a new connection."""
    out = []
    for _ in range(n):
        resp = request(
            "POST", f"http://127.0.0.1:{port}/v1/chat/completions", {**CHAT, "model": model}
        )
        assert resp.status == 200, resp.body
        out.append(resp.headers["x-request-id"][:16])
    return out


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_workers_share_the_port_reload_on_sighup_replace_the_dead_and_stop_together(
    upstream: MockUpstream, tmp_path: Path
) -> None:
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
        deadline = time.monotonic() + 20
        while True:
            assert proc.poll() is None, log.read_text()
            try:
                request("GET", f"http://127.0.0.1:{port}/healthz", timeout=1)
                break
            except OSError:
                assert time.monotonic() < deadline, log.read_text()
                time.sleep(0.05)
        ids = set(worker_ids(port, "gpt-4", 60))
        assert len(ids) == 2, ids  # two processes, each with its own app

        # SIGHUP reaches every worker: all of them serve the new alias.
        cfg.write_text(config(upstream, "smart"))
        proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 10
        while True:
            statuses = {
                request(
                    "POST",
                    f"http://127.0.0.1:{port}/v1/chat/completions",
                    {**CHAT, "model": "smart"},
                ).status
                for _ in range(20)
            }
            if statuses == {200}:
                break
            assert time.monotonic() < deadline, statuses
            time.sleep(0.1)

        # A worker that dies is replaced.
        pids = [int(p) for p in re.findall(r"worker \d started \(pid (\d+)\)", log.read_text())]
        assert len(pids) == 2
        os.kill(pids[0], signal.SIGKILL)
        deadline = time.monotonic() + 15
        while len(re.findall(r"worker \d started", log.read_text())) < 3:
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.05)
        assert len(set(worker_ids(port, "smart", 60))) == 2
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


def test_workers_must_be_a_sane_count() -> None:
    base = "providers: [{id: p, base_url: 'http://x'}]\n"
    for bad in (0, -1, 1000):
        with pytest.raises(ConfigError) as exc:
            parse_config(base + f"server: {{workers: {bad}}}", "w.yaml", {})
        assert "w.yaml: server.workers: must be between 1 and 256" in exc.value.problems
    assert parse_config(base + "server: {workers: 4}", "w.yaml", {}).server.workers == 4
    assert parse_config(base, "w.yaml", {}).server.workers == 1
