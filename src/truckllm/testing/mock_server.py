"""``truckllm mock``: the OpenAI, Anthropic and Gemini fakes on one port, sharing one set of
behaviours (latency, pacing, reply length, usage, per-key limits, faults).

Routes: OpenAI ``/v1/chat/completions``, ``/v1/responses``, ``/v1/embeddings``, ``/v1/models``
(provider ``base_url``: ``<url>/v1``); Anthropic ``/v1/messages`` (``base_url``: ``<url>``); Gemini
``/v1beta/models/{model}:generateContent``, ``:streamGenerateContent``, ``:embedContent``,
``:batchEmbedContents`` (``base_url``: ``<url>``). A key is the bearer token, ``x-api-key`` or
``x-goog-api-key``; one key's limits count its requests in every format.

Settings come from a YAML or JSON file and/or flags::

    listen: 127.0.0.1:9000
    seed: 1
    defaults:                                 # every key
      latency: {p50: 0.25, p99: 1.5}          # seconds: 0.2 | {min, max} | {p50, p99}
      ttft: 0.15
      tokens_per_s: 40
      tokens_per_event: 1                     # words in each stream event
      reply_tokens: {min: 40, max: 200}
    keys:
      sk-limited: {rpm: 60, tpm: 100000, window_s: 60}
      sk-flaky: {faults: {500: 0.05, 503: 0.02, 529: 0.01, reset: 0.01, cut: 0.01, stall: 0.01}}
      sk-cheap: {usage: {prompt_tokens: 10, completion_tokens: 5, cached_tokens: 2}}
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from aiohttp import web

from truckllm.config import parse_listen
from truckllm.telemetry.log import setup_logging
from truckllm.testing.behaviour import Conditions, KeyBehaviour, parse_behaviour
from truckllm.testing.fake_anthropic import FakeAnthropic
from truckllm.testing.fake_gemini import FakeGemini
from truckllm.testing.mock import MockUpstream
from truckllm.testing.prompt_cache import PromptCache
from truckllm.testing.wire import start_app

DEFAULT_LISTEN = "127.0.0.1:9000"


@dataclass
class MockSettings:
    """One run of the mock: where it listens, its random seed, and its behaviours."""

    listen: str = DEFAULT_LISTEN
    seed: int = 0
    defaults: KeyBehaviour = field(default_factory=KeyBehaviour)
    keys: dict[str, KeyBehaviour] = field(default_factory=dict)


def parse_settings(data: Any, source: str = "<mock>") -> MockSettings:
    """Settings from a decoded YAML/JSON document. Raises :class:`ValueError` listing every
    problem, each prefixed with ``source`` and the key path."""
    if data is None:
        return MockSettings()
    if not isinstance(data, Mapping):
        raise ValueError(f"{source}: the top level must be a mapping")
    problems: list[str] = []
    out = MockSettings()
    for name, value in data.items():
        try:
            if name == "listen":
                if not isinstance(value, str | int) or isinstance(value, bool):
                    raise ValueError("listen: expected host:port")
                out.listen = str(value)
            elif name == "seed":
                if not isinstance(value, int) or isinstance(value, bool):
                    raise ValueError("seed: must be a whole number")
                out.seed = value
            elif name == "defaults":
                out.defaults = parse_behaviour(value, "defaults")
            elif name == "keys":
                if not isinstance(value, Mapping):
                    raise ValueError("keys: expected a mapping of key -> behaviour")
                for key, behaviour in value.items():
                    try:
                        out.keys[str(key)] = parse_behaviour(behaviour or {}, f"keys.{key}")
                    except ValueError as exc:
                        problems.extend(str(exc).splitlines())
            else:
                raise ValueError(f"{name}: unknown key (known: defaults, keys, listen, seed)")
        except ValueError as exc:
            problems.extend(str(exc).splitlines())
    if problems:
        raise ValueError("\n".join(f"{source}: {p}" for p in problems))
    return out


def load_settings(path: str | Path) -> MockSettings:
    p = Path(path)
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ValueError(f"{p}: cannot read: {exc.strerror or exc}") from exc
    except yaml.YAMLError as exc:
        raise ValueError(f"{p}: invalid YAML/JSON: {exc}".replace("\n", " ")) from exc
    return parse_settings(data, str(p))


class MockServer:
    """The three fakes behind one aiohttp app. ``conditions`` holds the behaviours, and (when
    ``record`` is true) the arrivals and 429s of every key; the fakes are reachable as
    ``openai``, ``anthropic`` and ``gemini`` for scripting."""

    def __init__(
        self,
        defaults: KeyBehaviour | None = None,
        keys: Mapping[str, KeyBehaviour] | None = None,
        *,
        seed: int = 0,
        record: bool = False,
        reply_words: int = 8,
        event_delay: float = 0.0,
        stamp: bool = False,
        prompt_cache: bool = False,
    ) -> None:
        self.conditions = Conditions(defaults, keys, seed=seed)
        # One simulated prompt cache per key, whichever fake the key is used at.
        cache = PromptCache() if prompt_cache else None
        self.conditions.record = record
        self.openai = MockUpstream(
            conditions=self.conditions,
            reply_words=reply_words,
            event_delay=event_delay,
            stamp=stamp,
            prompt_cache=cache,
        )
        self.anthropic = FakeAnthropic(
            conditions=self.conditions,
            reply_words=reply_words,
            event_delay=event_delay,
            prompt_cache=cache,
        )
        self.gemini = FakeGemini(
            conditions=self.conditions,
            reply_words=reply_words,
            event_delay=event_delay,
            prompt_cache=cache,
        )
        for fake in (self.openai, self.anthropic, self.gemini):
            fake.record = record
        self.app = web.Application(client_max_size=64 * 1024 * 1024)
        self.app.add_routes(
            [*self.openai.routes(), *self.anthropic.routes(), *self.gemini.routes()]
        )
        self._runner: web.AppRunner | None = None
        self.url = ""

    @classmethod
    def from_settings(cls, settings: MockSettings, **kwargs: Any) -> MockServer:
        return cls(settings.defaults, settings.keys, seed=settings.seed, **kwargs)

    @property
    def arrivals(self) -> list[tuple[str, float]]:
        return self.conditions.arrivals

    @property
    def throttled(self) -> list[tuple[str, float, float]]:
        return self.conditions.throttled

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        """Listen; returns the root URL (OpenAI's ``base_url`` is this plus ``/v1``)."""
        self._runner, bound = await start_app(self.app, host, port, backlog=2048)
        self.url = f"http://{host}:{bound}"
        for fake in (self.anthropic, self.gemini):
            fake.url = self.url
        self.openai.url = self.url + "/v1"
        return self.url

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None


# -- the command -------------------------------------------------------------------------------

_FLAGS = {
    "latency": "seconds before each answer: 0.2, '{min: 0.1, max: 0.3}' or '{p50: 0.2, p99: 1}'",
    "ttft": "seconds from the start of the answer to its first token (same forms as --latency)",
    "tokens_per_s": "streaming pace in tokens a second",
    "tokens_per_event": "tokens (words) in each stream event (default 1)",
    "reply_tokens": "tokens (words) in each reply: 8 or '{min: 20, max: 200}'",
    "rpm": "requests per window and key, enforced with real 429s",
    "tpm": "tokens per window and key, enforced with real 429s",
    "window_s": "seconds of the rate-limit window (default 60)",
    "faults": "share of requests per fault: '{500: 0.01, 503: 0.01, 529: 0.01, reset: 0.01, "
    "cut: 0.01, stall: 0.01}'",
    "usage": "usage to report: '{prompt_tokens: 10, completion_tokens: 5, cached_tokens: 0}'",
}


def settings_from_args(ns: argparse.Namespace) -> MockSettings:
    """The file's settings (if any) with the flags on top. Flag values are YAML (so ``0.2``,
    ``{p50: 0.2, p99: 1}``); raises :class:`ValueError` listing every problem."""
    settings = load_settings(ns.config) if ns.config else MockSettings()
    given: dict[str, Any] = {}
    for name in _FLAGS:
        text = getattr(ns, name)
        if text is not None:
            given[name] = _yaml(text, "--" + name.replace("_", "-"))
    if given:
        flagged = parse_behaviour(given, "")
        for name in given:
            setattr(settings.defaults, name, getattr(flagged, name))
    keys: dict[str, Any] = {}
    for spec in ns.key:
        key, sep, text = spec.partition("=")
        if not sep or not key:
            raise ValueError(f"--key {spec!r}: expected KEY=MAP")
        keys[key] = _yaml(text, f"--key {key}") or {}
    if keys:
        settings.keys.update(parse_settings({"keys": keys}, "--key").keys)
    if ns.seed is not None:
        settings.seed = ns.seed
    if ns.listen:
        settings.listen = ns.listen
    return settings


def _yaml(text: str, where: str) -> Any:
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ValueError(f"{where}: not YAML: {exc}".replace("\n", " ")) from exc


def main(args: Sequence[str]) -> int:
    """``truckllm mock [--config FILE] [--listen ADDR] [flags]``: serve until interrupted."""
    p = argparse.ArgumentParser(prog="truckllm mock", allow_abbrev=False)
    p.add_argument("-listen", "--listen", dest="listen", metavar="ADDR", help=DEFAULT_LISTEN)
    p.add_argument(
        "-config", "--config", "-c", dest="config", metavar="FILE", help="YAML or JSON settings"
    )
    p.add_argument("--seed", type=int, help="random seed of latency samples and faults")
    for name, text in _FLAGS.items():
        p.add_argument("--" + name.replace("_", "-"), dest=name, metavar="VALUE", help=text)
    p.add_argument("--words", dest="reply_tokens", help=argparse.SUPPRESS)
    p.add_argument("--window", dest="window_s", help=argparse.SUPPRESS)
    p.add_argument(
        "--key",
        action="append",
        default=[],
        metavar="KEY=MAP",
        help="one key's behaviour, e.g. 'sk-a={rpm: 10, latency: 0.5}' (repeatable)",
    )
    p.add_argument(
        "--event-delay", type=float, default=0.0, help="seconds added between stream events"
    )
    p.add_argument(
        "--stamp",
        action="store_true",
        help='OpenAI stream chunks carry "mock_sent": the monotonic time they were sent',
    )
    p.add_argument(
        "--prompt-cache",
        action="store_true",
        help="report cached prompt tokens, as each provider does, when a prefix repeats on a key",
    )
    ns = p.parse_args(list(args))
    try:
        settings = settings_from_args(ns)
        host, port = parse_listen(settings.listen)
    except ValueError as exc:
        print(exc, file=sys.stderr)
        return 2
    setup_logging("info", "auto")

    async def run() -> None:
        mock = MockServer.from_settings(
            settings, event_delay=ns.event_delay, stamp=ns.stamp, prompt_cache=ns.prompt_cache
        )
        url = await mock.start(host, port)
        print(
            f"truckllm mock on {url}: OpenAI base_url {url}/v1, Anthropic and Gemini base_url "
            f"{url}",
            flush=True,
        )
        # Like the gateway: young collections on a timer, full ones rarely, so a benchmark's
        # mock does not stall every stream it serves for tens of ms.
        collections = Collector()
        collections.start()
        try:
            await asyncio.Event().wait()
        finally:
            collections.stop()
            await mock.stop()

    from truckllm.collector import Collector
    from truckllm.runner import freeze_startup_objects, run_async

    freeze_startup_objects()
    with contextlib.suppress(KeyboardInterrupt):
        run_async(run())
    return 0
