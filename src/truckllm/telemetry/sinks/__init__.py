"""Request-log sinks: where the one-record-per-request log goes (file, webhook, stdout, plugins).

A sink type is a factory registered by name in a :class:`~truckllm.plugins.Registry`; packages add
types through the entry-point group ``truckllm.sinks``. A factory gets a :class:`SinkContext`
(its name and its configuration; a plugin type's settings are ``config.options``) and returns a
:class:`Sink`. Subclassing :class:`QueueSink` and writing ``deliver`` gives a plugin the bounded
queue, batching, drop counting and flush-on-close that the built-ins have.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from truckllm.config.schema import FileSinkConfig, StdoutSinkConfig, WebhookSinkConfig
from truckllm.plugins import Registry
from truckllm.telemetry.record import RequestRecord
from truckllm.telemetry.sinks.base import DeliveryFailed, QueueSink, RecordEncoder


class Sink(Protocol):
    """One destination of request records.

    ``submit`` runs on the event loop for every request: it must be O(1), never block and never
    raise (buffer and count drops instead). ``start`` and ``close`` bracket its life; ``close``
    flushes what it holds within ``grace_s`` seconds. The counters feed the metrics.
    """

    name: str
    type: str
    delivered: int  # records delivered

    @property
    def dropped(self) -> Mapping[str, int]:
        """Records given up, by reason (a fixed word: ``queue_full``, ``shutdown``, ...)."""
        ...

    @property
    def depth(self) -> int:
        """Records held now."""
        ...

    def submit(self, record: RequestRecord) -> None: ...

    async def start(self) -> None: ...

    async def close(self, grace_s: float) -> None: ...


@dataclass(frozen=True)
class SinkContext:
    name: str  # "<type>-<position in logging.sinks>": the ``sink`` label of its metrics
    config: Any  # FileSinkConfig, WebhookSinkConfig, StdoutSinkConfig, or PluginSinkConfig


SinkFactory = Callable[[SinkContext], Sink]


def _file(ctx: SinkContext) -> Sink:
    from truckllm.telemetry.sinks.file import FileSink

    assert isinstance(ctx.config, FileSinkConfig)
    return FileSink(ctx.name, ctx.config)


def _webhook(ctx: SinkContext) -> Sink:
    from truckllm.telemetry.sinks.webhook import WebhookSink

    assert isinstance(ctx.config, WebhookSinkConfig)
    return WebhookSink(ctx.name, ctx.config)


def _stdout(ctx: SinkContext) -> Sink:
    from truckllm.telemetry.sinks.stdout import StdoutSink

    assert isinstance(ctx.config, StdoutSinkConfig)
    return StdoutSink(ctx.name, ctx.config)


def sink_registry(load_plugins: bool = True) -> Registry[SinkFactory]:
    """A registry with the built-in sink types and, unless told not to, installed plugins."""
    registry: Registry[SinkFactory] = Registry("sink", "truckllm.sinks")
    registry.register("file", _file)
    registry.register("webhook", _webhook)
    registry.register("stdout", _stdout)
    if load_plugins:
        registry.load_entry_points()
    return registry


__all__ = [
    "DeliveryFailed",
    "QueueSink",
    "RecordEncoder",
    "Sink",
    "SinkContext",
    "SinkFactory",
    "sink_registry",
]
