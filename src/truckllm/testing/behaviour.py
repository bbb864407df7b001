"""How a simulated upstream behaves, whatever wire format it speaks.

Latency, time to first token, streaming pace, reply length, reported usage, per-key rate limits
(requests and tokens per window, counted in exact sliding windows) and injected faults. This module
decides; each fake upstream turns the decision into its own wire format (see
:class:`truckllm.testing.wire.Dialect`). One :class:`Conditions` may be shared by several fakes
(``truckllm mock`` serves three formats on one port), so a key's window counts every request it
gets, in any format. Not thread-safe: call it from the fakes' event loop.
"""

from __future__ import annotations

import dataclasses
import math
import random
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

Z99 = 2.3263478740408408  # the standard normal's 99th percentile
FAILURES = ("500", "503", "529")  # faults answered with that status in the format's error body
FAULTS = (*FAILURES, "reset", "cut", "stall")  # reset: connection closed before any answer;
# cut: connection closed in the middle of the answer; stall: the answer stops, connection open


@dataclass(frozen=True, slots=True)
class Dist:
    """A random quantity (seconds or tokens): fixed, uniform between ``a`` and ``b``, or lognormal
    with median ``a`` and 99th percentile ``b``."""

    kind: Literal["fixed", "uniform", "lognormal"] = "fixed"
    a: float = 0.0
    b: float = 0.0

    @classmethod
    def fixed(cls, value: float) -> Dist:
        return cls("fixed", value, value)

    @classmethod
    def uniform(cls, low: float, high: float) -> Dist:
        return cls("uniform", low, high)

    @classmethod
    def lognormal(cls, p50: float, p99: float) -> Dist:
        return cls("lognormal", p50, p99)

    def sample(self, rng: random.Random) -> float:
        if self.kind == "fixed":
            return self.a
        if self.kind == "uniform":
            return rng.uniform(self.a, self.b)
        sigma = math.log(self.b / self.a) / Z99
        return rng.lognormvariate(math.log(self.a), sigma)

    @property
    def zero(self) -> bool:
        return self.kind == "fixed" and self.a == 0

    @classmethod
    def parse(cls, value: Any, where: str) -> Dist:
        """``0.2`` (fixed), ``{min: 0.1, max: 0.3}`` (uniform) or ``{p50: 0.2, p99: 1.5}``
        (lognormal). Raises :class:`ValueError` naming ``where``."""
        if isinstance(value, Dist):
            return value
        if isinstance(value, int | float) and not isinstance(value, bool):
            if value < 0:
                raise ValueError(f"{where}: must not be negative")
            return cls.fixed(float(value))
        if isinstance(value, Mapping):
            keys = set(value)
            nums = {k: v for k, v in value.items() if isinstance(v, int | float)}
            if len(nums) != len(value) or any(isinstance(v, bool) for v in nums.values()):
                raise ValueError(f"{where}: values must be numbers")
            if keys == {"min", "max"}:
                if not 0 <= nums["min"] <= nums["max"]:
                    raise ValueError(f"{where}: need 0 <= min <= max")
                return cls.uniform(float(nums["min"]), float(nums["max"]))
            if keys == {"p50", "p99"}:
                if not 0 < nums["p50"] <= nums["p99"]:
                    raise ValueError(f"{where}: need 0 < p50 <= p99")
                if nums["p50"] == nums["p99"]:
                    return cls.fixed(float(nums["p50"]))
                return cls.lognormal(float(nums["p50"]), float(nums["p99"]))
            if keys == {"value"}:
                return cls.parse(nums["value"], where)
        raise ValueError(
            f"{where}: expected a number, {{min, max}} (uniform) or {{p50, p99}} (lognormal), "
            f"got {value!r}"
        )


@dataclass(frozen=True, slots=True)
class UsageFigures:
    """Usage an upstream reports instead of its own count; ``None`` keeps the count (prompt: JSON
    bytes / 4; completion: the reply's tokens)."""

    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    cached_tokens: int | None = None


def reported_usage(
    figures: UsageFigures | None, prompt: int, completion: int, cached: int = 0
) -> tuple[int, int, int]:
    """(prompt, completion, cached) tokens to report: ``figures`` where set, else the counts."""
    if figures is None:
        return prompt, completion, cached
    return (
        prompt if figures.prompt_tokens is None else figures.prompt_tokens,
        completion if figures.completion_tokens is None else figures.completion_tokens,
        cached if figures.cached_tokens is None else figures.cached_tokens,
    )


@dataclass
class KeyBehaviour:
    """How the upstream treats one API key (or, as the defaults, every key). ``None`` inherits
    the run's default.

    Rate limits: ``rpm`` requests and ``tpm`` tokens per ``window_s`` seconds (tokens = prompt
    estimate + the reply's tokens), enforced exactly with real 429s and the format's rate-limit
    and retry headers. ``latency`` delays the start of the answer; streams then wait ``ttft``
    before the first token and send ``tokens_per_s`` tokens a second, ``tokens_per_event`` tokens
    (words) in each event (1, as OpenAI does; Anthropic and Gemini often send several);
    non-streamed answers take ``ttft`` + tokens / ``tokens_per_s`` more. ``faults`` maps a fault
    (``"500"``, ``"503"``, ``"529"``, ``"reset"``, ``"cut"``, ``"stall"``) to the share of
    admitted requests it hits; ``error_rate`` is a share of 500s (kept for older callers)."""

    rpm: int | None = None
    window_s: float | None = None
    latency: float | Dist | None = None
    error_rate: float = 0.0
    tpm: int | None = None
    ttft: float | Dist | None = None
    tokens_per_s: float | None = None
    reply_tokens: int | Dist | None = None
    usage: UsageFigures | None = None
    faults: dict[str, float] = field(default_factory=dict)
    tokens_per_event: int | None = None


@dataclass(frozen=True, slots=True)
class Quota:
    """A key's standing under its limits, as rate-limit headers tell it. Seconds until reset."""

    limit_requests: int | None
    remaining_requests: int
    reset_requests: float
    limit_tokens: int | None
    remaining_tokens: int
    reset_tokens: float


@dataclass(frozen=True, slots=True)
class Throttle:
    """Why a request gets a 429: the limit it hit (``requests`` or ``tokens``) and when to retry."""

    kind: Literal["requests", "tokens"]
    limit: int
    used: int
    requested: int
    retry_after: float
    window_s: float
    quota: Quota


@dataclass(frozen=True, slots=True)
class Decision:
    """What happens to one request. ``throttle`` set: answer 429 at once. Otherwise wait
    ``latency``, then ``fault`` (if any) or the answer paced by ``ttft`` and ``interval``."""

    throttle: Throttle | None = None
    quota: Quota | None = None
    latency: float = 0.0
    fault: str | None = None
    ttft: float = 0.0
    interval: float = 0.0  # seconds between streamed tokens
    reply_tokens: int | None = None
    usage: UsageFigures | None = None
    tokens_per_event: int = 1

    def generation_time(self, tokens: int) -> float:
        """How long a non-streamed answer of ``tokens`` tokens takes after ``latency``."""
        return self.ttft + tokens * self.interval

    def pieces(self, words: list[str]) -> list[str]:
        """The reply's words as the text of successive stream events, ``tokens_per_event`` words
        each, spaced so that they join back into the reply."""
        k = self.tokens_per_event
        groups = words if k == 1 else [" ".join(words[i : i + k]) for i in range(0, len(words), k)]
        return groups[:1] + [" " + g for g in groups[1:]]

    @property
    def event_interval(self) -> float:
        """Seconds between two stream events."""
        return self.interval * self.tokens_per_event


PASS = Decision()


@dataclass(frozen=True, slots=True)
class _Resolved:
    rpm: int | None
    tpm: int | None
    window_s: float
    latency: Dist | None
    ttft: Dist | None
    interval: float
    reply_tokens: Dist | None
    usage: UsageFigures | None
    faults: tuple[tuple[str, float], ...]  # (fault, cumulative share)
    tokens_per_event: int

    @property
    def idle(self) -> bool:
        return (
            self.rpm is None
            and self.tpm is None
            and self.latency is None
            and self.ttft is None
            and not self.interval
            and self.reply_tokens is None
            and self.usage is None
            and not self.faults
            and self.tokens_per_event == 1
        )


class _Window:
    """Sliding-window counts of one key: request times, and (time, tokens) pairs."""

    __slots__ = ("requests", "token_sum", "tokens")

    def __init__(self) -> None:
        self.requests: deque[float] = deque()
        self.tokens: deque[tuple[float, int]] = deque()
        self.token_sum = 0

    def expire(self, now: float, window: float) -> None:
        edge = now - window
        while self.requests and self.requests[0] <= edge:
            self.requests.popleft()
        while self.tokens and self.tokens[0][0] <= edge:
            self.token_sum -= self.tokens.popleft()[1]

    def quota(self, r: _Resolved, now: float) -> Quota:
        reset_r = self.requests[0] + r.window_s - now if self.requests else 0.0
        reset_t = self.tokens[0][0] + r.window_s - now if self.tokens else 0.0
        return Quota(
            r.rpm,
            max((r.rpm or 0) - len(self.requests), 0),
            max(reset_r, 0.0),
            r.tpm,
            max((r.tpm or 0) - self.token_sum, 0),
            max(reset_t, 0.0),
        )

    def tokens_free_in(self, need: int, limit: int, now: float, window: float) -> float:
        """Seconds until ``need`` more tokens fit under ``limit``."""
        excess = self.token_sum + need - limit
        if need > limit:
            return window
        for t, n in self.tokens:
            excess -= n
            if excess <= 0:
                return max(t + window - now, 0.001)
        return window


class Conditions:
    """The behaviour engine shared by the fake upstreams. ``defaults`` apply to every key;
    ``keys`` override them per key, field by field. ``arrivals`` (key, monotonic time) and
    ``throttled`` (key, monotonic time, retry-after seconds) record what happened while
    ``record`` is true, so tests and benchmarks can check that no request reached a key while it
    was cooling down. ``clock`` is injectable for tests."""

    def __init__(
        self,
        defaults: KeyBehaviour | None = None,
        keys: Mapping[str, KeyBehaviour] | None = None,
        *,
        seed: int = 0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.defaults = defaults or KeyBehaviour()
        self.keys: dict[str, KeyBehaviour] = dict(keys or {})
        self.rng = random.Random(seed)
        self.clock = clock
        self.record = True
        self.arrivals: list[tuple[str, float]] = []
        self.throttled: list[tuple[str, float, float]] = []
        self._windows: dict[str, _Window] = {}
        self._resolved: dict[str, _Resolved] = {}
        self._default: _Resolved | None = None

    def set(self, key: str, behaviour: KeyBehaviour) -> None:
        """Give ``key`` its own behaviour (from now on; its window keeps counting)."""
        self.keys[key] = behaviour
        self._resolved.pop(key, None)

    def set_defaults(self, behaviour: KeyBehaviour) -> None:
        self.defaults = behaviour
        self._resolved.clear()
        self._default = None

    @property
    def idle(self) -> bool:
        """True when no key has any behaviour: every request passes untouched."""
        return not self.keys and self._default_resolved().idle

    def resolved(self, key: str) -> _Resolved:
        r = self._resolved.get(key)
        if r is None:
            b = self.keys.get(key)
            r = self._default_resolved() if b is None else _resolve(b, self.defaults)
            self._resolved[key] = r
        return r

    def _default_resolved(self) -> _Resolved:
        if self._default is None:
            self._default = _resolve(self.defaults, KeyBehaviour())
        return self._default

    def quota(self, key: str) -> Quota | None:
        """``key``'s standing under its limits now, without counting a request; ``None`` when it
        has no limits."""
        r = self.resolved(key)
        if r.rpm is None and r.tpm is None:
            return None
        now = self.clock()
        window = self._windows.get(key) or _Window()
        window.expire(now, r.window_s)
        return window.quota(r, now)

    def admit(self, key: str, prompt_tokens: int = 0) -> Decision:
        """Count one request for ``key`` (of about ``prompt_tokens`` prompt tokens) and decide
        what happens to it."""
        now = self.clock()
        if self.record:
            self.arrivals.append((key, now))
        r = self.resolved(key)
        if r.idle:
            return PASS
        rng = self.rng
        reply = None if r.reply_tokens is None else max(0, round(r.reply_tokens.sample(rng)))
        quota: Quota | None = None
        if r.rpm is not None or r.tpm is not None:
            window = self._windows.get(key)
            if window is None:
                window = self._windows[key] = _Window()
            window.expire(now, r.window_s)
            need = prompt_tokens + (reply if reply is not None else 0)
            throttle: Throttle | None = None
            if r.rpm is not None and len(window.requests) >= r.rpm:
                wait = window.requests[0] + r.window_s - now
                throttle = Throttle(
                    "requests",
                    r.rpm,
                    len(window.requests),
                    1,
                    max(wait, 0.001),
                    r.window_s,
                    window.quota(r, now),
                )
            elif r.tpm is not None and window.token_sum + need > r.tpm:
                wait = window.tokens_free_in(need, r.tpm, now, r.window_s)
                throttle = Throttle(
                    "tokens",
                    r.tpm,
                    window.token_sum,
                    need,
                    wait,
                    r.window_s,
                    window.quota(r, now),
                )
            if throttle is not None:
                if self.record:
                    self.throttled.append((key, now, throttle.retry_after))
                return Decision(throttle=throttle, quota=throttle.quota)
            window.requests.append(now)
            if r.tpm is not None:
                window.tokens.append((now, need))
                window.token_sum += need
            quota = window.quota(r, now)
        fault = None
        if r.faults:
            x = rng.random()
            for name, edge in r.faults:
                if x < edge:
                    fault = name
                    break
        return Decision(
            quota=quota,
            latency=r.latency.sample(rng) if r.latency is not None else 0.0,
            fault=fault,
            ttft=r.ttft.sample(rng) if r.ttft is not None else 0.0,
            interval=r.interval,
            reply_tokens=reply,
            usage=r.usage,
            tokens_per_event=r.tokens_per_event,
        )


def _resolve(b: KeyBehaviour, d: KeyBehaviour) -> _Resolved:
    def pick(name: str) -> Any:
        value = getattr(b, name)
        return getattr(d, name) if value is None else value

    def dist(value: float | Dist | None) -> Dist | None:
        if value is None:
            return None
        out = Dist.parse(value, "behaviour")
        return None if out.zero else out

    faults = {**d.faults, **b.faults}
    error_rate = b.error_rate or d.error_rate
    if error_rate:
        faults["500"] = faults.get("500", 0.0) + error_rate
    cumulative: list[tuple[str, float]] = []
    total = 0.0
    for name in FAULTS:
        rate = faults.get(name, 0.0)
        if rate > 0:
            total += rate
            cumulative.append((name, total))
    rate = pick("tokens_per_s")
    reply = pick("reply_tokens")
    return _Resolved(
        rpm=pick("rpm"),
        tpm=pick("tpm"),
        window_s=pick("window_s") or 60.0,
        latency=dist(pick("latency")),
        ttft=dist(pick("ttft")),
        interval=1.0 / rate if rate else 0.0,
        reply_tokens=None if reply is None else Dist.parse(reply, "reply_tokens"),
        usage=pick("usage"),
        faults=tuple(cumulative),
        tokens_per_event=pick("tokens_per_event") or 1,
    )


# -- reading behaviours from a configuration file or flags ---------------------------------------

_FIELDS = {f.name for f in dataclasses.fields(KeyBehaviour)}


def parse_behaviour(data: Any, where: str) -> KeyBehaviour:
    """A :class:`KeyBehaviour` from a mapping (YAML/JSON), strictly: unknown keys, wrong types
    and impossible values raise :class:`ValueError` naming the key path."""
    if not isinstance(data, Mapping):
        raise ValueError(f"{where}: expected a mapping, got {data!r}")
    problems: list[str] = []
    out: dict[str, Any] = {}
    for name, value in data.items():
        path = f"{where}.{name}" if where else str(name)
        try:
            if name not in _FIELDS:
                raise ValueError(f"{path}: unknown key (known: {', '.join(sorted(_FIELDS))})")
            out[name] = _field(str(name), value, path)
        except ValueError as exc:
            problems.append(str(exc))
    if problems:
        raise ValueError("\n".join(problems))
    return KeyBehaviour(**out)


def _field(name: str, value: Any, path: str) -> Any:
    if value is None:
        return None
    if name in ("rpm", "tpm", "tokens_per_event"):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{path}: must be a whole number of at least 1")
        return value
    if name in ("window_s", "tokens_per_s"):
        if not isinstance(value, int | float) or isinstance(value, bool) or value <= 0:
            raise ValueError(f"{path}: must be a positive number")
        return float(value)
    if name in ("latency", "ttft", "reply_tokens"):
        return Dist.parse(value, path)
    if name == "error_rate":
        return _share(value, path)
    if name == "usage":
        if not isinstance(value, Mapping):
            raise ValueError(f"{path}: expected a mapping")
        known = {f.name for f in dataclasses.fields(UsageFigures)}
        for k, v in value.items():
            if k not in known:
                raise ValueError(f"{path}.{k}: unknown key (known: {', '.join(sorted(known))})")
            if not isinstance(v, int) or isinstance(v, bool) or v < 0:
                raise ValueError(f"{path}.{k}: must be a whole number, at least 0")
        return UsageFigures(**value)
    if not isinstance(value, Mapping):  # faults
        raise ValueError(f"{path}: expected a mapping of fault -> share")
    faults: dict[str, float] = {}
    for k, v in value.items():
        kind = str(k)
        if kind not in FAULTS:
            raise ValueError(f"{path}.{kind}: unknown fault (known: {', '.join(FAULTS)})")
        faults[kind] = _share(v, f"{path}.{kind}")
    if sum(faults.values()) > 1:
        raise ValueError(f"{path}: the shares add up to more than 1")
    return faults


def _share(value: Any, path: str) -> float:
    if not isinstance(value, int | float) or isinstance(value, bool) or not 0 <= value <= 1:
        raise ValueError(f"{path}: must be a share between 0 and 1")
    return float(value)
