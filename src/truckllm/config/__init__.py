"""Configuration: schema, strict loader, and the Secret type."""

from truckllm.config.loader import (
    ConfigError,
    client_key_digests,
    load_config,
    parse_config,
    parse_listen,
    provider_timeouts,
)
from truckllm.config.schema import (
    AliasConfig,
    ClientKey,
    Config,
    KeyConfig,
    Limits,
    LoggingConfig,
    Pricing,
    ProviderConfig,
    RetryConfig,
    RoutingConfig,
    ServerConfig,
    Timeouts,
)
from truckllm.config.secret import Secret

__all__ = [
    "AliasConfig",
    "ClientKey",
    "Config",
    "ConfigError",
    "KeyConfig",
    "Limits",
    "LoggingConfig",
    "Pricing",
    "ProviderConfig",
    "RetryConfig",
    "RoutingConfig",
    "Secret",
    "ServerConfig",
    "Timeouts",
    "client_key_digests",
    "load_config",
    "parse_config",
    "parse_listen",
    "provider_timeouts",
]
