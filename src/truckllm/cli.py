"""The ``truckllm`` command.

truckllm -config config.yaml [-listen :8080]     serve (also --config/--listen, or "serve")
truckllm check --config config.yaml              validate; exit 0, or print every problem, exit 2
truckllm demo [--listen :8080]                   gateway + simulated upstreams, no keys needed
truckllm mock [--listen 127.0.0.1:9000]          simulated OpenAI, Anthropic and Gemini upstreams
truckllm                                         keys from the environment, else the demo
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
from collections.abc import Sequence

from truckllm import __version__
from truckllm.config import Config, ConfigError, load_config, parse_config, parse_listen
from truckllm.providers import provider_registry
from truckllm.telemetry.log import setup_logging

log = logging.getLogger("truckllm")


def _parser(prog: str, with_config: bool, default_listen: str | None) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, allow_abbrev=False)
    if with_config:
        p.add_argument(
            "-config",
            "--config",
            "-c",
            dest="config",
            metavar="FILE",
            help="YAML configuration file",
        )
    p.add_argument(
        "-listen",
        "--listen",
        dest="listen",
        metavar="ADDR",
        default=default_listen,
        help="listen address, host:port or :port (overrides server.listen)",
    )
    return p


def _load(path: str) -> Config:
    return load_config(path, provider_types=provider_registry().names())


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    command = (
        args.pop(0)
        if args and args[0] in ("serve", "check", "demo", "mock", "version")
        else "serve"
    )
    if command == "version":
        print(f"truckllm {__version__}")
        return 0
    if command == "check":
        return _check(args)
    if command == "demo":
        return _demo(args)
    if command == "mock":
        return _mock(args)
    return _serve(args)


def _check(args: list[str]) -> int:
    p = _parser("truckllm check", True, None)
    p.add_argument("files", nargs="*", metavar="FILE")
    ns = p.parse_args(args)
    files = ([ns.config] if ns.config else []) + ns.files
    if not files:
        p.error("name a configuration file: truckllm check --config config.yaml")
    status = 0
    for path in files:
        try:
            cfg = _load(path)
        except ConfigError as exc:
            for problem in exc.problems:
                print(problem, file=sys.stderr)
            status = 2
            continue
        keys = sum(len(pr.keys) for pr in cfg.providers)
        print(
            f"{path}: OK ({len(cfg.providers)} providers, {keys} keys, {len(cfg.model_aliases)} aliases)"
        )
    return status


def _serve(args: list[str]) -> int:
    from truckllm.api import App
    from truckllm.runner import serve

    ns = _parser("truckllm", True, None).parse_args(args)
    if ns.config:
        try:
            cfg = _load(ns.config)
        except ConfigError as exc:
            for problem in exc.problems:
                print(problem, file=sys.stderr)
            return 2
    else:
        env_cfg = config_from_environment(os.environ)
        if env_cfg is None:
            print(
                "No --config and no provider keys in the environment (OPENAI_API_KEY): starting the demo.",
                file=sys.stderr,
            )
            return _demo(args)
        cfg = env_cfg
    setup_logging(cfg.logging.level, cfg.logging.format)
    if ns.listen:
        try:
            parse_listen(ns.listen)
        except ValueError as exc:
            print(f"--listen: {exc}", file=sys.stderr)
            return 2
    listen = ns.listen or cfg.server.listen
    log.info("truckllm %s serving on %s (%d providers)", __version__, listen, len(cfg.providers))
    if cfg.server.workers > 1:
        from truckllm.workers import serve_workers

        def worker_app() -> App:
            """A worker (re)started later reads the file as it is now, as a reload would."""
            current = cfg
            if ns.config:
                try:
                    current = _load(ns.config)
                except ConfigError as exc:
                    log.error("%s; this worker keeps the start-up configuration", exc)
            return App(current, config_path=ns.config)

        host, port = parse_listen(listen)
        return serve_workers(
            worker_app,
            host,
            port,
            cfg.server.workers,
            cfg.server.drain_delay + cfg.server.shutdown_timeout,
        )
    serve(App(cfg, config_path=ns.config), listen)
    return 0


def config_from_environment(env: os._Environ[str] | dict[str, str]) -> Config | None:
    """The embedded default: OpenAI with the key in OPENAI_API_KEY, every model passed through."""
    if not env.get("OPENAI_API_KEY"):
        return None
    text = """
providers:
  - id: openai
    base_url: ${OPENAI_BASE_URL:-https://api.openai.com/v1}
    models: ["*"]
    keys:
      - secret: ${OPENAI_API_KEY}
"""
    return parse_config(text, "<environment>", env, provider_registry().names())


DEMO_CONFIG = """
providers:
  - id: demo-a
    base_url: {url_a}
    models: [gpt-4o-mini, text-embedding-3-small]
    keys:
      - id: demo-a-1
        secret: sk-demo-a-1
        pricing: {{input_token_cost: 0.00015, output_token_cost: 0.0006}}
      - id: demo-a-2
        secret: sk-demo-a-2
        pricing: {{input_token_cost: 0.00015, output_token_cost: 0.0006}}
  - id: demo-b
    base_url: {url_b}
    models: [gpt-4o-mini]
    keys:
      - id: demo-b-1
        secret: sk-demo-b-1
model_aliases:
  gpt-4o: [demo-a:gpt-4o, demo-b:gpt-4o]
  fast: demo-b:gpt-4o-mini
server:
  listen: "{listen}"
"""


def _demo(args: list[str]) -> int:
    ns = _parser("truckllm demo", False, "127.0.0.1:8080").parse_args(args)
    try:
        host, port = parse_listen(ns.listen)
    except ValueError as exc:
        print(f"--listen: {exc}", file=sys.stderr)
        return 2
    if not _simulation_installed("demo"):
        return 2
    setup_logging("info", "auto")
    from truckllm.runner import run_async

    with contextlib.suppress(KeyboardInterrupt):
        run_async(_run_demo(host, port))
    return 0


async def _run_demo(host: str, port: int) -> None:
    from truckllm.api import App
    from truckllm.runner import GatewayServer
    from truckllm.testing.behaviour import KeyBehaviour
    from truckllm.testing.mock_server import MockServer

    # One simulated service (OpenAI, Anthropic and Gemini formats) that answers like a real one:
    # a first token after about 50 ms, then 50 tokens a second.
    mock = MockServer(KeyBehaviour(ttft=0.05, tokens_per_s=50))
    url_a = url_b = await mock.start() + "/v1"
    shown = f"{'127.0.0.1' if host in ('0.0.0.0', '') else host}:{port}"
    cfg = parse_config(
        DEMO_CONFIG.format(url_a=url_a, url_b=url_b, listen=f"{host}:{port}"),
        "<demo>",
        {},
        provider_registry().names(),
    )
    app = App(cfg)
    server = GatewayServer(app, host, port)
    print(_demo_banner(shown), flush=True)
    try:
        await server.serve()
    finally:
        await mock.stop()


def _demo_banner(addr: str) -> str:
    return f"""
TruckLLM demo: the gateway is on http://{addr}, in front of two simulated OpenAI-compatible
providers (demo-a with two keys, demo-b with one). No keys and no network needed. Try:

  curl -s http://{addr}/v1/chat/completions -H 'Content-Type: application/json' \\
    -d '{{"model": "gpt-4o", "messages": [{{"role": "user", "content": "Hello!"}}]}}'

  curl -sN http://{addr}/v1/chat/completions -H 'Content-Type: application/json' \\
    -d '{{"model": "gpt-4o-mini", "stream": true, "messages": [{{"role": "user", "content": "Hi"}}]}}'

python - <<'PY'
from openai import OpenAI
client = OpenAI(base_url="http://{addr}/v1", api_key="unused-in-demo")
reply = client.chat.completions.create(model="gpt-4o", messages=[{{"role": "user", "content": "Hello!"}}])
print(reply.choices[0].message.content, reply.usage)
PY

Press Ctrl-C to stop.
"""


def _simulation_installed(command: str) -> bool:
    """The simulated upstreams run on aiohttp, an optional extra: say how to get it."""
    try:
        import aiohttp  # noqa: F401
    except ImportError:
        print(
            f"truckllm {command} runs simulated upstreams, which need the 'demo' extra: "
            "pip install 'truckllm[demo]' (from a checkout: pip install '.[demo]')",
            file=sys.stderr,
        )
        return False
    return True


def _mock(args: list[str]) -> int:
    if not _simulation_installed("mock"):
        return 2
    from truckllm.testing.mock_server import main as mock_main

    return mock_main(args)
