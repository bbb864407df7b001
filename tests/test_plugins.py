"""Provider plugins: found through the ``truckllm.providers`` entry-point group, checked when
registered, and able to serve requests."""

from __future__ import annotations

import importlib
import logging
import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest
from helpers import Gateway

from truckllm.plugins import PluginError, Registry
from truckllm.providers import provider_registry

PLUGIN = '''
"""A provider plugin that answers every chat with the reversed prompt."""
import orjson
from truckllm.providers.base import Reply, Usage


class ReverseProvider:
    def __init__(self, ctx):
        self.greeting = ctx.config.options.get("greeting", "")

    async def send(self, call, key):
        text = call.body["messages"][-1]["content"][::-1]
        body = {
            "id": "rev-1", "object": "chat.completion", "created": 0, "model": call.model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": self.greeting + text},
                         "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
        }
        return Reply(200, "application/json", {}, body=orjson.dumps(body), usage=Usage(1, 1))
'''


def install_plugin(site: Path, name: str, entry_points: str, module: str | None = None) -> None:
    """Install a distribution the way pip lays it out: a module and its .dist-info."""
    if module is not None:
        (site / f"{name}.py").write_text(module)
    info = site / f"{name}-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(textwrap.dedent(entry_points))
    importlib.invalidate_caches()


def test_an_installed_provider_plugin_serves_requests(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, gateway_factory: Callable[..., Gateway]
) -> None:
    install_plugin(
        tmp_path,
        "reverse_provider",
        "[truckllm.providers]\nreverse = reverse_provider:ReverseProvider\n",
        PLUGIN,
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    registry = provider_registry()
    assert "reverse" in registry.names()
    gw = gateway_factory(
        """
        providers:
          - id: backwards
            type: reverse
            base_url: http://unused.invalid
            models: [rev-1]
            options: {greeting: "> "}
        """,
        registry=registry,
    )
    resp = gw.post(
        "/v1/chat/completions", {"model": "rev-1", "messages": [{"role": "user", "content": "abc"}]}
    )
    assert resp.status == 200, resp.body
    assert resp.json()["choices"][0]["message"]["content"] == "> cba"
    assert resp.headers["x-truckllm-provider"] == "backwards"


def test_a_broken_plugin_is_skipped_and_logged(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    install_plugin(
        tmp_path, "broken_plugin", "[truckllm.providers]\nbroken = broken_plugin_missing:Nope\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    logging.getLogger("truckllm").propagate = True
    with caplog.at_level(logging.ERROR, logger="truckllm.plugins"):
        registry = provider_registry()
    assert "broken" not in registry.names() and "openai" in registry.names()
    assert "cannot load provider plugin 'broken'" in caplog.text


def test_registry_checks_names_and_duplicates() -> None:
    registry: Registry[Callable[..., object]] = Registry("store", "truckllm.stores")
    registry.register("memory", dict)
    with pytest.raises(PluginError, match="already registered"):
        registry.register("memory", list, origin="some plugin")
    with pytest.raises(PluginError, match="must be lower-case"):
        registry.register("Bad Name", dict)
    with pytest.raises(PluginError, match="not callable"):
        registry.register("thing", 42)  # type: ignore[arg-type]
    with pytest.raises(PluginError, match="unknown store 'redis'"):
        registry.get("redis")
