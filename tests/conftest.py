"""Fixtures: fake upstreams on real loopback HTTP, and gateways built from YAML text."""

from __future__ import annotations

import textwrap
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from helpers import Gateway

from truckllm.api import App
from truckllm.config import parse_config
from truckllm.providers import provider_registry
from truckllm.testing.loop import LoopThread
from truckllm.testing.mock import MockUpstream
from truckllm.testing.serve import ServerThread
from truckllm.testing.wire import FakeServer


@pytest.fixture(scope="session")
def loop_thread() -> Iterator[LoopThread]:
    lt = LoopThread("fake-upstreams")
    yield lt
    lt.stop()


@pytest.fixture
def serve_fake(loop_thread: LoopThread) -> Iterator[Callable[..., Any]]:
    """``serve_fake(FakeClass, **kwargs)``: any fake upstream (a ``FakeServer``) served on
    loopback for the test, stopped after it."""
    started: list[FakeServer] = []

    def make(cls: type[FakeServer], **kwargs: Any) -> Any:
        fake = cls(**kwargs)
        loop_thread.run(fake.start())
        started.append(fake)
        return fake

    yield make
    for fake in started:
        loop_thread.run(fake.stop())


@pytest.fixture
def upstream_factory(serve_fake: Callable[..., Any]) -> Callable[..., MockUpstream]:
    return lambda **kwargs: serve_fake(MockUpstream, **kwargs)


@pytest.fixture
def upstream(upstream_factory: Callable[..., MockUpstream]) -> MockUpstream:
    return upstream_factory()


@pytest.fixture
def gateway_factory() -> Iterator[Callable[..., Gateway]]:
    running: list[ServerThread] = []

    def make(config_yaml: str, env: dict[str, str] | None = None, registry: Any = None) -> Gateway:
        cfg = parse_config(
            textwrap.dedent(config_yaml),
            "<test>",
            env or {},
            (registry or provider_registry()).names(),
        )
        app = App(cfg, registry=registry)
        server = ServerThread(app).start()
        running.append(server)
        return Gateway(app, server)

    yield make
    for server in running:
        server.stop()
