"""The inbound endpoints, one module each. A module provides ``routes(services) -> list[Route]``;
list it here to serve it."""

from __future__ import annotations

from collections.abc import Callable
from types import ModuleType

from truckllm.api.endpoints import (
    admin,
    chat,
    completions,
    embeddings,
    health,
    images,
    messages,
    metrics,
    models,
    moderations,
    responses,
    speech,
    transcriptions,
    ui,
)
from truckllm.api.routes import Route
from truckllm.api.services import Services

MODULES: tuple[ModuleType, ...] = (
    chat,
    embeddings,
    messages,
    responses,
    completions,
    moderations,
    images,
    speech,
    transcriptions,
    models,
    health,
    metrics,
    admin,
    ui,
)


def all_routes(services: Services) -> list[Route]:
    out: list[Route] = []
    for module in MODULES:
        make: Callable[[Services], list[Route]] = module.routes
        out.extend(make(services))
    return out
