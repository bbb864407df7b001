"""The ``truckllm`` command as a user runs it: a real process, a real port."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from helpers import request, wait_serving

from truckllm.testing.mock import MockUpstream
from truckllm.testing.serve import free_port

TRUCKLLM = shutil.which("truckllm", path=os.path.dirname(sys.executable)) or "truckllm"
CHAT = {"model": "gpt-4", "messages": [{"role": "user", "content": "hi"}]}


@contextmanager
def running(
    args: list[str], port: int, env: dict[str, str] | None = None
) -> Iterator[dict[str, object]]:
    """Run the command until the block ends, then SIGINT it; yields a dict that gets the exit
    status and output."""
    result: dict[str, object] = {}
    proc = subprocess.Popen(
        [TRUCKLLM, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, **(env or {})},
    )
    try:
        wait_serving(f"http://127.0.0.1:{port}/healthz", proc)
        yield result
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            result["output"], _ = proc.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            result["output"], _ = proc.communicate()
        result["status"] = proc.returncode


@pytest.mark.parametrize("flags", [("-config", "-listen"), ("--config", "--listen")])
def test_serve_with_the_original_flag_spelling(
    flags: tuple[str, str], upstream: MockUpstream, tmp_path: Path
) -> None:
    cfg = tmp_path / "config.yaml"
    cfg.write_text(f"""
providers:
  - id: openai
    base_url: {upstream.url}
    keys:
      - secret: ${{UPSTREAM_KEY}}
model_aliases:
  gpt-4: openai:gpt-4
server:
  listen: ":1"
""")
    port = free_port()
    with running(
        [flags[0], str(cfg), flags[1], f"127.0.0.1:{port}"],
        port,
        env={"UPSTREAM_KEY": "sk-from-env"},
    ) as result:
        resp = request("POST", f"http://127.0.0.1:{port}/v1/chat/completions", CHAT)
        assert resp.status == 200
        assert upstream.received[-1].bearer == "sk-from-env"
    assert result["status"] == 0
    out = str(result["output"])
    assert "sk-from-env" not in out
    assert "serves ANY client" in out  # no client keys: said loudly


def test_serve_refuses_a_bad_config_with_every_problem(tmp_path: Path) -> None:
    cfg = tmp_path / "bad.yaml"
    cfg.write_text(
        "providers: [{id: openai, keys: [{secret: s, wieght: 2}]}]\nmodel_aliases: {a: x:y}\n"
    )
    result = subprocess.run(
        [TRUCKLLM, "-config", str(cfg)], capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 2
    assert f"{cfg}: providers[0].keys[0].wieght: unknown key" in result.stderr
    assert f"{cfg}: model_aliases.a: unknown provider 'x'" in result.stderr


def start_demo(port: int, env: dict[str, str]) -> subprocess.Popen[str]:
    """``truckllm demo`` on ``port``, its output (banner and logs) on one pipe."""
    return subprocess.Popen(
        [TRUCKLLM, "demo", "--listen", f"127.0.0.1:{port}"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )


def test_demo_serves_with_no_keys_and_no_network() -> None:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k != "OPENAI_API_KEY"}
    proc = start_demo(port, env)
    try:
        resp = wait_serving(
            f"http://127.0.0.1:{port}/v1/chat/completions",
            proc,
            method="POST",
            body={"model": "gpt-4o", "messages": [{"role": "user", "content": "Hello!"}]},
        )
        assert resp.status == 200 and resp.json()["choices"][0]["message"]["content"]
        stream = request(
            "POST",
            f"http://127.0.0.1:{port}/v1/chat/completions",
            {
                "model": "gpt-4o-mini",
                "stream": True,
                "messages": [{"role": "user", "content": "Hi"}],
            },
        )
        assert stream.body.rstrip().endswith(b"data: [DONE]")
    finally:
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=10)
    assert f"curl -s http://127.0.0.1:{port}/v1/chat/completions" in out
    assert 'OpenAI(base_url="http://127.0.0.1:' in out


def test_no_config_serves_openai_from_the_environment(upstream: MockUpstream) -> None:
    port = free_port()
    env = {"OPENAI_API_KEY": "sk-env-key", "OPENAI_BASE_URL": upstream.url}
    with running(["-listen", f"127.0.0.1:{port}"], port, env=env) as result:
        resp = request("POST", f"http://127.0.0.1:{port}/v1/chat/completions",
                       {"model": "gpt-4.1-nano", "messages": [{"role": "user", "content": "hi"}]})
        assert resp.status == 200
        assert upstream.received[-1].body["model"] == "gpt-4.1-nano"  # every model name passes through
        assert upstream.received[-1].bearer == "sk-env-key"
    assert result["status"] == 0 and "sk-env-key" not in str(result["output"])


def test_the_demos_printed_commands_run_as_printed() -> None:
    """The banner's curl command and Python snippet, pasted into a shell, work against it."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k != "OPENAI_API_KEY"}
    proc = start_demo(port, env)
    try:
        assert proc.stdout is not None
        banner: list[str] = []
        for line in proc.stdout:  # the banner is printed (and flushed) before serving
            banner.append(line)
            if line.startswith("Press Ctrl-C"):
                break
        text = "".join(banner)
        snippet = text[text.index("python - <<'PY'") : text.index("\nPY\n") + 4]
        wait_serving(f"http://127.0.0.1:{port}/healthz", proc)
        shell_env = {**env, "PATH": os.path.dirname(sys.executable) + os.pathsep + env["PATH"]}
        ran = subprocess.run(
            ["bash", "-c", snippet], capture_output=True, text=True, env=shell_env, timeout=60
        )
        assert ran.returncode == 0, ran.stderr
        assert "Hello from" in ran.stdout and "CompletionUsage" in ran.stdout
        curl = text[text.index("curl -s ") :].split("\n\n")[0]
        fetched = subprocess.run(["bash", "-c", curl], capture_output=True, text=True, timeout=60)
        assert fetched.returncode == 0 and '"choices"' in fetched.stdout, fetched.stderr
    finally:
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=10)
