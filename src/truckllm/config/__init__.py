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
    ClientKey,
    Config,
    KeyConfig,
    Limits,
    LoggingConfig,
    Pricing,
    ProviderConfig,
    RetryConfig,
    ServerConfig,
    Timeouts,
)
from truckllm.config.secret import Secret

__all__ = [
    "ClientKey",
    "Config",
    "ConfigError",
    "KeyConfig",
    "Limits",
    "LoggingConfig",
    "Pricing",
    "ProviderConfig",
    "RetryConfig",
    "Secret",
    "ServerConfig",
    "Timeouts",
    "client_key_digests",
    "load_config",
    "parse_config",
    "parse_listen",
    "provider_timeouts",
]
