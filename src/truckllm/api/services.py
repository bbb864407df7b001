"""The app's parts that endpoints may use, built once per app."""

from __future__ import annotations

from dataclasses import dataclass

from truckllm.admin import AdminAPI
from truckllm.api.conversations import KeyValue
from truckllm.api.proxy import Proxy
from truckllm.api.routes import Readiness
from truckllm.telemetry.hub import Telemetry


@dataclass(frozen=True)
class Services:
    proxy: Proxy  # admit -> execute -> respond -> record, for every proxied endpoint
    admin: AdminAPI
    telemetry: Telemetry
    readiness: Readiness
    kv: KeyValue  # the state store's key-value table (through the coordinator)
