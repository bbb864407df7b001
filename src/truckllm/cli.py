"""The ``truckllm`` command.

truckllm -config config.yaml [-listen :8080]     serve (also --config/--listen, or "serve")
truckllm check --config config.yaml [--probe]    validate (and try every key); exit 0, or 2
truckllm demo [--listen :8080]                   gateway + simulated upstreams, no keys needed
truckllm mock [--listen 127.0.0.1:9000]          simulated OpenAI, Anthropic and Gemini upstreams
truckllm --version                               the installed version
truckllm                                         keys from the environment, else the demo
"""

from __future__ import annotations

import argparse
import contextlib
import difflib
import importlib.metadata
import logging
import os
import secrets
import socket
import sys
from collections.abc import Sequence

from truckllm import __version__
from truckllm.config import Config, ConfigError, load_config, parse_config, parse_listen
from truckllm.config.advice import base_url_warnings
from truckllm.providers import provider_registry
from truckllm.telemetry.log import setup_logging

log = logging.getLogger("truckllm")

# Every subcommand with its one line of help, in the order ``--help`` lists them.
COMMANDS = {
    "serve": "run the gateway (the default): truckllm -config config.yaml",
    "check": "validate configuration files; --probe also tries every provider key",
    "demo": "the gateway in front of simulated upstreams: no keys, no network",
    "mock": "simulated OpenAI, Anthropic and Gemini upstreams to point a config at",
    "version": "print the installed version (also --version)",
}
USAGE_ERROR = 2


def version() -> str:
    """The installed distribution's version; the source's own when run from a bare checkout."""
    try:
        return importlib.metadata.version("truckllm")
    except importlib.metadata.PackageNotFoundError:
        return __version__


def _commands_text() -> str:
    width = max(map(len, COMMANDS))
    lines = [f"  {name:<{width}}  {text}" for name, text in COMMANDS.items()]
    return (
        "commands:\n"
        + "\n".join(lines)
        + "\n\n'truckllm COMMAND --help' shows a command's options."
    )


def _parser(
    prog: str, with_config: bool, default_listen: str | None, description: str | None = None
) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, allow_abbrev=False, description=description)
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


def _serve_parser() -> argparse.ArgumentParser:
    """The top-level parser: serving options, and every command listed in its help."""
    p = _parser(
        "truckllm",
        True,
        None,
        "An OpenAI-compatible gateway and load balancer for many LLM providers and API keys.\n\n"
        + _commands_text(),
    )
    p.usage = "truckllm [-config FILE] [-listen ADDR]\n       truckllm COMMAND [options]"
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.add_argument("--version", action="version", version=f"truckllm {version()}")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    command = args[0] if args and not args[0].startswith("-") else None
    if command is None or command == "serve":
        return _serve(args[1:] if command else args)
    args.pop(0)
    if command == "version":
        print(f"truckllm {version()}")
        return 0
    if command == "check":
        return _check(args)
    if command == "demo":
        return _demo(args)
    if command == "mock":
        return _mock(args)
    return _unknown(command)


def _unknown(command: str) -> int:
    """An unknown subcommand: say which exist, and the likely one meant."""
    message = f"truckllm: unknown command {command!r}; commands: {', '.join(COMMANDS)}"
    close = difflib.get_close_matches(command, COMMANDS, n=1, cutoff=0.5)
    if close:
        message += f"\ndid you mean 'truckllm {close[0]}'?"
    elif command.endswith((".yaml", ".yml", ".json")):
        message += f"\nto serve a configuration file: truckllm -config {command}"
    print(message + "\n(truckllm --help lists every command)", file=sys.stderr)
    return USAGE_ERROR


def _check(args: list[str]) -> int:
    p = _parser(
        "truckllm check",
        True,
        None,
        "Validate configuration files: every problem with its file and key path (exit 2), and "
        "warnings about base_url forms that cannot work for the provider's type.",
    )
    p.add_argument("files", nargs="*", metavar="FILE")
    p.add_argument(
        "--probe",
        action="store_true",
        help="also make one cheap authenticated call per provider key (list models) and say "
        "whether each key is valid, rejected or unreachable (exit 1 when any is not valid)",
    )
    p.add_argument(
        "--timeout",
        type=float,
        default=10.0,
        metavar="SECONDS",
        help="how long each probe may take (default 10)",
    )
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
            status = USAGE_ERROR
            continue
        for warning in base_url_warnings(cfg):
            print(f"{path}: warning: {warning}", file=sys.stderr)
        keys = sum(len(pr.keys) for pr in cfg.providers)
        print(
            f"{path}: OK ({len(cfg.providers)} providers, {keys} keys, {len(cfg.model_aliases)} aliases)"
        )
        if ns.probe and not _probe(cfg, ns.timeout) and status == 0:
            status = 1
    return status


def _probe(cfg: Config, timeout: float) -> bool:
    """Print one line per key: valid, rejected or unreachable, with the URL called. Whether
    every probed key was valid."""
    from truckllm.api.app import proxies_from_environment
    from truckllm.http.client import HTTPClient
    from truckllm.providers.probe import Verdict, probe_keys
    from truckllm.runner import run_async

    results: list[Verdict] = []

    async def run() -> None:
        client = HTTPClient(proxies=proxies_from_environment())
        try:
            results.extend(await probe_keys(cfg, timeout, client))
        finally:
            await client.close()

    run_async(run())
    for r in results:
        print(f"  {r.provider}/{r.key_id}: {r.verdict}: {r.detail}")
    return all(r.verdict in ("valid", "skipped") for r in results)


def _serve(args: list[str]) -> int:
    from truckllm.api import App
    from truckllm.runner import serve

    ns = _serve_parser().parse_args(args)
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
    log.info("truckllm %s serving on %s (%d providers)", version(), listen, len(cfg.providers))
    for warning in base_url_warnings(cfg):
        log.warning("%s: %s", cfg.source, warning)
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
  admin_api_key: "{admin_key}"
"""


def _demo(args: list[str]) -> int:
    ns = _parser("truckllm demo", False, "127.0.0.1:8080").parse_args(args)
    try:
        host, port = parse_listen(ns.listen)
    except ValueError as exc:
        print(f"--listen: {exc}", file=sys.stderr)
        return USAGE_ERROR
    if not _simulation_installed("demo"):
        return USAGE_ERROR
    try:  # the port first: nothing is printed for a demo that cannot start
        sock = socket.create_server(
            (host, port), family=socket.AF_INET6 if ":" in host else socket.AF_INET
        )
    except OSError as exc:
        print(
            f"truckllm demo: cannot listen on {host}:{port}: {exc.strerror or exc}; "
            f"choose another address with --listen (e.g. --listen 127.0.0.1:{port + 1})",
            file=sys.stderr,
        )
        return 1
    setup_logging("info", "auto")
    from truckllm.runner import run_async

    with contextlib.suppress(KeyboardInterrupt):
        run_async(_run_demo(host, sock))
    return 0


async def _run_demo(host: str, sock: socket.socket) -> None:
    from truckllm.api import App
    from truckllm.runner import GatewayServer
    from truckllm.testing.behaviour import KeyBehaviour
    from truckllm.testing.mock_server import MockServer

    # One simulated service (OpenAI, Anthropic and Gemini formats) that answers like a real one:
    # a first token after about 50 ms, then 50 tokens a second.
    mock = MockServer(KeyBehaviour(ttft=0.05, tokens_per_s=50))
    url_a = url_b = await mock.start() + "/v1"
    port = sock.getsockname()[1]
    shown = f"{'127.0.0.1' if host in ('0.0.0.0', '') else host}:{port}"
    admin_key = "demo-" + secrets.token_urlsafe(12)  # the dashboard's; new at every start
    cfg = parse_config(
        DEMO_CONFIG.format(url_a=url_a, url_b=url_b, listen=f"{host}:{port}", admin_key=admin_key),
        "<demo>",
        {},
        provider_registry().names(),
    )
    app = App(cfg)
    server = GatewayServer(app, host, port, sock=sock)
    print(_demo_banner(shown, admin_key), flush=True)
    try:
        await server.serve()
    finally:
        await mock.stop()


def _demo_banner(addr: str, admin_key: str) -> str:
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

The dashboard: http://{addr}/ui/ (sign in with the admin key {admin_key}).

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
        return USAGE_ERROR
    from truckllm.testing.mock_server import main as mock_main

    return mock_main(args)
