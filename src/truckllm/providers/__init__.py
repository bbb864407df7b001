"""Provider adapters, one package per wire format, found by name in a registry."""

from __future__ import annotations

from collections.abc import Callable

from truckllm.plugins import Registry
from truckllm.providers.base import Call, Provider, ProviderContext, Reply, UpstreamError, Usage

ProviderFactory = Callable[[ProviderContext], Provider]


def provider_registry(load_plugins: bool = True) -> Registry[ProviderFactory]:
    """A registry with the built-in provider types and, unless told not to, installed plugins."""
    from truckllm.providers.anthropic import AnthropicProvider
    from truckllm.providers.gemini import GeminiProvider
    from truckllm.providers.openai import OpenAIProvider

    registry: Registry[ProviderFactory] = Registry("provider", "truckllm.providers")
    registry.register("openai", OpenAIProvider)
    registry.register("anthropic", AnthropicProvider)
    registry.register("gemini", GeminiProvider)
    if load_plugins:
        registry.load_entry_points()
    return registry


__all__ = [
    "Call",
    "Provider",
    "ProviderContext",
    "ProviderFactory",
    "Reply",
    "UpstreamError",
    "Usage",
    "provider_registry",
]
