"""The ``truckllm`` command as a user runs it: a real process, a real port."""

from __future__ import annotations

import importlib.metadata
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from helpers import request, wait_serving

from truckllm.testing.fake_anthropic import FakeAnthropic
from truckllm.testing.fake_gemini import FakeGemini
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
        banner = read_banner(proc)
        (admin_key,) = re.findall(r"sign in with the admin key (\S+)\)", banner)
        page = request("GET", f"http://127.0.0.1:{port}/ui/")
        assert page.status == 200 and b"<html" in page.body.lower()  # 404 without an admin key
        keys = f"http://127.0.0.1:{port}/admin/v1/keys"
        assert request("GET", keys, headers={"Authorization": "Bearer wrong"}).status == 401
        signed_in = request("GET", keys, headers={"Authorization": f"Bearer {admin_key}"})
        assert signed_in.status == 200 and b"demo-a-1" in signed_in.body
        assert b"sk-demo" not in signed_in.body
    finally:
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=10)
    assert f"curl -s http://127.0.0.1:{port}/v1/chat/completions" in banner
    assert 'OpenAI(base_url="http://127.0.0.1:' in banner
    assert f"The dashboard: http://127.0.0.1:{port}/ui/" in banner


def read_banner(proc: subprocess.Popen[str]) -> str:
    """The demo's banner: its output up to the line that ends it (printed before it serves)."""
    assert proc.stdout is not None
    lines: list[str] = []
    for line in proc.stdout:
        lines.append(line)
        if line.startswith("Press Ctrl-C"):
            break
    return "".join(lines)


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


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [TRUCKLLM, *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **(env or {})},
    )


def test_help_lists_every_command_with_one_line() -> None:
    for flag in ("--help", "-h"):
        result = run(flag)
        assert result.returncode == 0
        out = result.stdout
        assert "-config FILE" in out and "-listen ADDR" in out and "--version" in out
        listed = [line.split()[0] for line in out.split("commands:\n")[1].split("\n\n")[0].splitlines()]
        assert listed == ["serve", "check", "demo", "mock", "version"]
    assert "--probe" in run("check", "--help").stdout


def test_version_comes_from_the_installed_package() -> None:
    expected = f"truckllm {importlib.metadata.version('truckllm')}\n"
    assert run("--version").stdout == expected
    assert run("version").stdout == expected


@pytest.mark.parametrize(
    ("word", "hint"),
    [
        ("bogus", None),
        ("chek", "did you mean 'truckllm check'?"),
        ("dmeo", "did you mean 'truckllm demo'?"),
        ("config.yaml", "to serve a configuration file: truckllm -config config.yaml"),
    ],
)
def test_an_unknown_command_names_the_commands(word: str, hint: str | None) -> None:
    result = run(word)
    assert result.returncode == 2 and result.stdout == ""
    lines = result.stderr.splitlines()
    assert lines[0] == (
        f"truckllm: unknown command '{word}'; commands: serve, check, demo, mock, version"
    )
    if hint:
        assert lines[1] == hint
    else:
        assert "did you mean" not in result.stderr


def test_check_probe_says_which_keys_work(
    serve_fake: Callable[..., Any], tmp_path: Path
) -> None:
    openai = serve_fake(MockUpstream, valid_keys={"sk-openai-good"})
    anthropic = serve_fake(FakeAnthropic, valid_keys={"sk-ant-good"})
    gemini = serve_fake(FakeGemini, valid_keys={"gemini-good"})
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = s.getsockname()[1]
    cfg = tmp_path / "probe.yaml"
    cfg.write_text(f"""
providers:
  - id: openai
    base_url: {openai.url}
    keys: [{{id: o-good, secret: sk-openai-good}}, {{id: o-bad, secret: sk-openai-bad}}]
  - id: anthropic
    base_url: {anthropic.url}
    keys: [{{id: a-good, secret: sk-ant-good}}, {{id: a-bad, secret: sk-ant-bad}}]
  - id: gemini
    base_url: {gemini.url}
    query_params: {{key-in-query: sk-query-secret}}
    keys: [{{id: g-good, secret: gemini-good}}, {{id: g-bad, secret: gemini-bad}}]
  - id: gone
    base_url: http://127.0.0.1:{dead}/v1
    keys: [{{id: d, secret: sk-gone}}]
""")
    result = run("check", "--probe", "--timeout", "5", str(cfg))
    assert result.returncode == 1, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == f"{cfg}: OK (4 providers, 7 keys, 0 aliases)"
    assert lines[1:7] == [
        f"  openai/o-good: valid: GET {openai.url}/models: 200",
        f"  openai/o-bad: rejected: GET {openai.url}/models: 401",
        f"  anthropic/a-good: valid: GET {anthropic.url}/v1/models: 200",
        f"  anthropic/a-bad: rejected: GET {anthropic.url}/v1/models: 401",
        f"  gemini/g-good: valid: GET {gemini.url}/v1beta/models: 200",
        f"  gemini/g-bad: rejected: GET {gemini.url}/v1beta/models: 400 API_KEY_INVALID",
    ]
    assert lines[7].startswith(
        f"  gone/d: unreachable: GET http://127.0.0.1:{dead}/v1/models: ConnectionRefusedError: "
    )
    assert len(lines) == 8
    secrets = ("sk-openai-good", "sk-openai-bad", "sk-ant-good", "sk-ant-bad", "gemini-good")
    for secret in (*secrets, "gemini-bad", "sk-gone", "sk-query-secret"):
        assert secret not in result.stdout + result.stderr
    # Each fake saw the key the way its API takes it.
    assert anthropic.received[-1].headers.get("anthropic-version")
    assert {gemini.key_of(r) for r in gemini.received} == {"gemini-good", "gemini-bad"}
    assert all("key-in-query=sk-query-secret" in r.path for r in gemini.received)
    all_valid = tmp_path / "valid.yaml"
    all_valid.write_text(
        f"providers: [{{id: openai, base_url: '{openai.url}', keys: [{{secret: sk-openai-good}}]}}]\n"
    )
    assert run("check", "--probe", str(all_valid)).returncode == 0


def test_check_warns_about_base_urls_that_cannot_work(tmp_path: Path) -> None:
    cfg = tmp_path / "urls.yaml"
    cfg.write_text("""
providers:
  - {id: anthropic, base_url: "https://api.anthropic.com/v1", keys: [{secret: a}]}
  - {id: openai, base_url: "https://api.openai.com", keys: [{secret: b}]}
  - {id: gemini, base_url: "https://generativelanguage.googleapis.com", keys: [{secret: c}]}
""")
    result = run("check", str(cfg))
    assert result.returncode == 0  # warnings, not errors
    warnings = result.stderr.splitlines()
    assert len(warnings) == 2
    assert warnings[0].startswith(
        f"{cfg}: warning: providers[0].base_url: 'https://api.anthropic.com/v1' includes a version"
    )
    assert "use 'https://api.anthropic.com'" in warnings[0]
    assert warnings[1].startswith(
        f"{cfg}: warning: providers[1].base_url: 'https://api.openai.com' has no version"
    )


def test_check_shows_a_yaml_error_where_it_is(tmp_path: Path) -> None:
    cfg = tmp_path / "broken.yaml"
    cfg.write_text("providers:\n  - id: openai\n    keys: [{secret: x, weight: 2]\n")
    result = run("check", str(cfg))
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        f"{cfg}:3:33: invalid YAML: expected ',' or '}}', but got ']' "
        "(while parsing a flow mapping at line 3, column 12)",
        "        keys: [{secret: x, weight: 2]",
        " " * (4 + 32) + "^",  # under column 33
    ]


def test_the_demo_checks_its_port_before_printing_anything() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env = {k: v for k, v in os.environ.items() if k != "OPENAI_API_KEY"}
        result = subprocess.run(
            [TRUCKLLM, "demo", "--listen", f"127.0.0.1:{port}"],
            capture_output=True,
            text=True,
            timeout=60,
            env=env,
        )
    assert result.returncode == 1
    assert result.stdout == ""  # no banner for a demo that cannot start
    assert result.stderr.startswith(f"truckllm demo: cannot listen on 127.0.0.1:{port}: ")
    assert "--listen" in result.stderr
