"""The typed configuration tree. Decoded strictly from YAML by :mod:`truckllm.config.loader`.

Every class is frozen: a configuration is a value, and a reload builds a new one.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from truckllm.config.secret import Secret

PricingUnit = Literal["per_1k_tokens", "per_1m_tokens", "per_token"]
Strategy = Literal[
    "round_robin", "weighted", "least_loaded", "lowest_latency", "lowest_cost", "adaptive"
]
_UNIT_DIVISOR = {"per_1k_tokens": 1_000.0, "per_1m_tokens": 1_000_000.0, "per_token": 1.0}


@dataclass(frozen=True)
class Limits:
    """Per-key limits: requests and tokens per minute and per day. ``None`` means unlimited."""

    rpm: int | None = None
    tpm: int | None = None
    rpd: int | None = None
    tpd: int | None = None


@dataclass(frozen=True)
class Pricing:
    """USD prices of one key. The unit defaults to USD per 1,000 tokens, as in the original docs."""

    input_token_cost: float = 0.0
    output_token_cost: float = 0.0
    cached_input_token_cost: float | None = None  # cache reads; default: the input price
    unit: PricingUnit = "per_1k_tokens"
    cache_creation_input_token_cost: float | None = None  # cache writes; default: the input price
    # Units that are not tokens, whatever ``unit`` says (OpenAI's image, audio and speech models):
    image_cost: float = 0.0  # USD per image generated
    audio_second_cost: float = 0.0  # USD per second of audio transcribed or translated
    character_cost: float = 0.0  # USD per 1,000,000 characters of speech input

    def cost_usd(self, prompt_tokens: int, completion_tokens: int, cached_tokens: int = 0) -> float:
        """Cost of one request. Cached prompt tokens use their own price when one is set."""
        div = _UNIT_DIVISOR[self.unit]
        cached_price = (
            self.input_token_cost
            if self.cached_input_token_cost is None
            else self.cached_input_token_cost
        )
        uncached = max(prompt_tokens - cached_tokens, 0)
        return (
            uncached * self.input_token_cost
            + min(cached_tokens, prompt_tokens) * cached_price
            + completion_tokens * self.output_token_cost
        ) / div


@dataclass(frozen=True)
class KeyConfig:
    """One upstream API key. ``id`` is stable and non-secret; derived from the secret when absent."""

    secret: Secret | None = None
    id: str = ""
    weight: float = 1.0
    limits: Limits = field(default_factory=Limits)
    pricing: Pricing = field(default_factory=Pricing)
    enabled: bool = True


@dataclass(frozen=True)
class Timeouts:
    """Seconds. ``read`` bounds the silence between two reads from the upstream: the wait for a
    non-streamed answer and the gap between stream events. ``total``, when set, also bounds a whole
    non-streamed request (it costs a timer per request, so it is off by default)."""

    connect: float = 10.0
    read: float = 300.0
    total: float | None = None


@dataclass(frozen=True)
class ServerTimeouts(Timeouts):
    """``server.timeouts``: the upstream defaults above, and the client side's deadlines (seconds,
    as nginx's): the request head, the silence between two reads of a body and the whole body,
    a client that takes nothing of a full write buffer, an idle keep-alive connection."""

    headers: float = 60.0
    body: float = 60.0
    body_total: float = 300.0
    send: float = 60.0
    keep_alive: float = 75.0


@dataclass(frozen=True)
class ProviderTLS:
    """``providers[].tls``: a PEM CA bundle trusted instead of the system's store, a client
    certificate and key presented to the upstream (mutual TLS; the key may sit in the
    certificate's file), and ``verify: false`` to skip certificate checks (testing only)."""

    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    verify: bool = True


@dataclass(frozen=True)
class ProviderConfig:
    id: str
    base_url: str = ""
    type: str = ""
    keys: tuple[KeyConfig, ...] = ()
    models: tuple[str, ...] = ()
    headers: dict[str, str] = field(default_factory=dict)
    timeout: float | Timeouts | None = None
    auth_header: str = "Authorization"
    query_params: dict[str, str] = field(default_factory=dict)
    stream_usage: bool = True
    strategy: Strategy | None = None  # key selection; routing.strategy when absent
    options: dict[str, Any] = field(default_factory=dict)
    # The upstream serves OpenAI's Responses API (/responses): Responses clients pass through.
    # None: true for the provider id "openai" on api.openai.com, false otherwise (openai type).
    responses_api: bool | None = None
    # Built-in Responses tools (web_search, ...) this provider cannot run, when the request is
    # translated for it: left out (named in x-truckllm-dropped-tools) or refused with a 400.
    builtin_tools: Literal["drop", "error"] = "drop"
    tls: ProviderTLS | None = None
    # None: the environment's HTTPS_PROXY/HTTP_PROXY/NO_PROXY; "none": always direct; or an
    # http:// proxy URL for this provider alone.
    proxy: str | None = None
    # Connections open at once to this provider's upstream (0: no cap); at the cap a request
    # waits pool_timeout seconds for one, then fails over.
    max_connections: int = 0
    pool_timeout: float = 10.0


@dataclass(frozen=True)
class ClientKey:
    """A client credential: ``key`` in clear, or ``key_sha256`` (hex digest) so the file need not
    hold it. ``id`` names the client in logs and usage; derived when absent."""

    id: str = ""
    key: Secret | None = None
    key_sha256: str | None = None
    allowed_models: tuple[str, ...] | None = (
        None  # model names or aliases, globs allowed; None: all
    )
    rpm: int | None = None  # requests per minute for this client
    tpm: int | None = None  # tokens per minute (estimated at admission, corrected by usage)
    budget: Budget | None = None


@dataclass(frozen=True)
class Budget:
    """A client's spending limits in USD: per UTC day, per UTC calendar month, and in total."""

    daily: float | None = None
    monthly: float | None = None
    total: float | None = None


@dataclass(frozen=True)
class ServerConfig:
    listen: str = ":8080"
    api_keys: tuple[Secret | ClientKey, ...] = ()
    admin_api_key: Secret | None = None
    max_body_bytes: int = 16 * 1024 * 1024
    max_response_bytes: int = 64 * 1024 * 1024  # a non-streamed upstream answer; more is a 502
    max_header_count: int = 100  # header lines of a client request; more is a 431
    max_connections: int = 10_000  # open client connections; more are closed at once (0: no cap)
    max_in_flight: int = 0  # requests being answered per process; more get 503 (0: no cap)
    # CIDRs of load balancers whose X-Forwarded-For names the client (none: the peer is)
    trusted_proxies: tuple[str, ...] = ()
    timeouts: ServerTimeouts = field(default_factory=ServerTimeouts)
    reload_interval: float = 1.0  # seconds between checks of the config file; 0 turns it off
    shutdown_timeout: float = 30.0  # seconds in-flight requests may take to finish on SIGTERM
    drain_delay: float = 0.0  # seconds still serving (with /readyz 503) after SIGTERM, first
    workers: int = 1  # processes serving the one port; read at start-up only


@dataclass(frozen=True)
class AliasConfig:
    """An alias in mapping form. ``mode``: ``priority`` tries targets in order (failover);
    ``balance`` scores every target's best key and takes the better one."""

    targets: tuple[str, ...]
    mode: Literal["priority", "balance"] = "priority"
    strategy: Strategy | None = None  # key selection inside each target's provider
    context_fallback: str | None = None  # an alias to try when the prompt is too long


@dataclass(frozen=True)
class RetryConfig:
    """Retry and failover policy for one client request."""

    max_attempts: int = 3  # upstream attempts, the first included
    max_same_key_retries: int = 1  # retries on a key already tried, when no other key is left
    deadline: float = 60.0  # seconds for all attempts (a stream's own duration is not counted)
    budget_ratio: float = 0.2  # retries are at most this share of requests ...
    budget_burst: int = 20  # ... plus this many
    backoff_base: float = 0.05  # seconds; full jitter, doubled per retry after 5xx/timeouts
    backoff_max: float = 1.0


@dataclass(frozen=True)
class CooldownConfig:
    base: float = 1.0
    max: float = 60.0


@dataclass(frozen=True)
class BreakerConfig:
    failures: int = 5
    provider_failures: int = 20
    open_for: float = 10.0
    max_open_for: float = 300.0


@dataclass(frozen=True)
class OutlierConfig:
    """Success-rate ejection of keys and providers (see docs/routing.md)."""

    enabled: bool = True
    window: float = 30.0  # seconds the success rate is measured over
    min_requests: int = 10  # outcomes in the window before the rate counts
    min_success_rate: float = 0.7  # eject below this ...
    peer_margin: float = 0.2  # ... or this far below the rest of the pool's rate
    base_ejection: float = 10.0  # seconds, times the number of recent ejections ...
    max_ejection: float = 300.0  # ... capped
    max_ejected_share: float = 0.5  # of a provider's keys, or of the providers, at once
    probe_successes: int = 3  # successful probes in a row that end an ejection


@dataclass(frozen=True)
class AffinityConfig:
    """Prompt-cache affinity: requests of one session, or sharing a prompt prefix, go to the key
    that served the last of them while it stays eligible and has ``min_headroom`` left, so the
    provider's prompt cache on that key stays warm (see docs/cache.md)."""

    enabled: bool = False
    header: str | None = None  # a request header naming the session, besides the built-in ones
    prefix_bytes: int = 4096  # of the system prompt and the early messages, hashed
    prefix_messages: int = 1  # how many of the first messages (after the system prompt) count
    min_headroom: float = 0.1  # share of the key's limits left, below which the request moves
    max_entries: int = 100_000  # sessions and prefixes remembered (least recently used go)


@dataclass(frozen=True)
class RoutingConfig:
    strategy: Strategy = "adaptive"
    max_wait: float = 2.0  # seconds to wait for a key to have room before answering 429
    cooldown: CooldownConfig = field(default_factory=CooldownConfig)
    breaker: BreakerConfig = field(default_factory=BreakerConfig)
    outlier: OutlierConfig = field(default_factory=OutlierConfig)
    out_of_service_probe: float = 300.0
    default_max_output_tokens: int = 512  # reserved when a request names no max_tokens
    affinity: AffinityConfig = field(default_factory=AffinityConfig)


@dataclass(frozen=True)
class FileSinkConfig:
    """Request log as JSON Lines, rotated by size and/or time; ``keep`` rotated files are kept."""

    type: Literal["file"]
    path: str
    max_bytes: int | None = 100 * 1024 * 1024  # rotate before a file would grow past this
    rotate_every: float | None = None  # seconds; files roll at multiples of it (UTC)
    keep: int = 5  # rotated files kept besides the current one
    max_queue: int = 10_000  # records buffered in memory; more are dropped and counted
    batch_size: int = 1_000
    flush_interval: float = 1.0  # seconds a record may wait for its batch to fill


@dataclass(frozen=True)
class WebhookSinkConfig:
    """Request log as batched JSON-array POSTs, retried with backoff, optionally HMAC-signed."""

    type: Literal["webhook"]
    url: str
    batch_size: int = 100
    flush_interval: float = 1.0
    max_queue: int = 10_000
    timeout: float = 10.0  # seconds per POST
    max_retries: int | None = 10  # per batch, then it is dropped and counted; null: never give up
    backoff_base: float = 0.5  # seconds, doubled per retry, with jitter
    backoff_max: float = 30.0
    hmac_secret: Secret | None = None  # signs the body: X-TruckLLM-Signature: sha256=<hex>
    headers: dict[str, Secret] = field(default_factory=dict)
    proxy: str | None = None  # None: HTTPS_PROXY/HTTP_PROXY/NO_PROXY; "none": direct; or a URL


@dataclass(frozen=True)
class StdoutSinkConfig:
    """Request log as JSON Lines on standard output."""

    type: Literal["stdout"]
    max_queue: int = 10_000
    batch_size: int = 1_000
    flush_interval: float = 0.2


@dataclass(frozen=True)
class PluginSinkConfig:
    """A sink type added by a plugin (entry-point group ``truckllm.sinks``): its settings are
    free-form under ``options``."""

    type: str
    options: dict[str, Any] = field(default_factory=dict)


SinkConfig = FileSinkConfig | WebhookSinkConfig | StdoutSinkConfig | PluginSinkConfig


@dataclass(frozen=True)
class LoggingConfig:
    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["auto", "json", "text"] = "auto"
    sinks: tuple[SinkConfig, ...] = ()  # request-log sinks, any number


@dataclass(frozen=True)
class MetricsConfig:
    """Prometheus metrics in text format at ``path`` (no authentication: a scrape target)."""

    enabled: bool = True
    path: str = "/metrics"


@dataclass(frozen=True)
class TracingConfig:
    """OpenTelemetry traces over OTLP/HTTP (the ``otel`` extra); off while ``endpoint`` is unset.
    Read at start-up: changing it takes a restart."""

    endpoint: str | None = None  # the collector's base URL (/v1/traces is appended) or a full URL
    service_name: str = "truckllm"
    sample_ratio: float = 1.0  # of the traces the gateway starts; a client's own flag is followed
    headers: dict[str, Secret] = field(default_factory=dict)  # sent with every export
    capture_content: bool = False  # export the prompt and the answer (they may hold personal data)
    timeout: float = 10.0  # seconds per export
    max_queue: int = 2048  # spans waiting for export; more are dropped (and counted by the SDK)
    flush_interval: float = 1.0  # seconds a span may wait for its batch


@dataclass(frozen=True)
class RuntimeStoreConfig:
    """Where usage, cooldowns and shared limits live: ``memory``, ``file``, ``redis``, ``http``
    or a plugin's type. Options that a type does not use are ignored by it."""

    type: str = "memory"
    path: str | None = None  # file: the snapshot; the journal is ``<path>.journal``
    url: Secret | None = None  # redis: redis://...; http: the store's base URL
    token: Secret | None = None  # http: sent as a bearer token
    prefix: str = "truckllm"  # redis: key prefix
    flush_interval: float = 1.0  # seconds between batches of usage to the store
    timeout: float = 1.0  # seconds per store call
    lease_ttl: float = 2.0  # shared limits: seconds a leased unit stays spendable
    lease_slack: float = 1.0  # shared limits: seconds from spending a unit to the upstream
    options: dict[str, Any] = field(default_factory=dict)  # for plugin stores
    kv_max_bytes: int = 64 * 1024 * 1024  # memory and file stores: the key-value table's bound
    proxy: str | None = None  # http: None, the environment's proxies; "none": direct; or a URL


@dataclass(frozen=True)
class ResponsesStateConfig:
    """Responses API conversations the gateway keeps (``store: true``) for translated traffic,
    and where the upstream's own response ids live, in the runtime store."""

    ttl: float = 30 * 86400.0  # seconds a stored response can be retrieved or continued
    max_bytes: int = 4 * 1024 * 1024  # one stored response with its conversation; larger: not kept


@dataclass(frozen=True)
class StorageConfig:
    runtime: RuntimeStoreConfig = field(default_factory=RuntimeStoreConfig)
    responses: ResponsesStateConfig = field(default_factory=ResponsesStateConfig)


CacheEndpoint = Literal["chat", "embeddings", "messages", "responses"]


@dataclass(frozen=True)
class CacheConfig:
    """The response cache (exact match; off by default). ``redis`` shares it between processes:
    its ``url`` defaults to the state store's when that is a Redis store (docs/cache.md)."""

    enabled: bool = False
    type: Literal["memory", "redis"] = "memory"
    ttl: float = 300.0  # seconds an answer is served from the cache
    max_entries: int = 10_000  # memory: answers kept (least recently used go first)
    max_bytes: int = 64 * 1024 * 1024  # memory: their total size
    max_entry_bytes: int = 1024 * 1024  # a larger answer is not kept
    endpoints: tuple[CacheEndpoint, ...] = ("chat", "embeddings", "messages", "responses")
    namespace: Literal["client", "shared"] = "client"  # client: tenants never share answers
    sampled: bool = False  # also cache requests sampled with temperature > 0 (or unset)
    tool_calls: bool = False  # also cache answers that call tools
    url: Secret | None = None  # redis: redis://...; default: storage.runtime.url
    prefix: str | None = None  # redis: key prefix; default: storage.runtime.prefix + ":cache"
    timeout: float = 0.1  # redis: seconds per call; past it the request is a miss


@dataclass(frozen=True)
class Config:
    providers: tuple[ProviderConfig, ...] = ()
    model_aliases: dict[str, str | tuple[str, ...] | AliasConfig] = field(default_factory=dict)
    server: ServerConfig = field(default_factory=ServerConfig)
    routing: RoutingConfig = field(default_factory=RoutingConfig)
    retry: RetryConfig = field(default_factory=RetryConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    tracing: TracingConfig = field(default_factory=TracingConfig)
    storage: StorageConfig = field(default_factory=StorageConfig)
    cache: CacheConfig = field(default_factory=CacheConfig)
    source: str = field(default="<memory>", compare=False, metadata={"internal": True})
