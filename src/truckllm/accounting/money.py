"""Exact money: integer nano-dollars (1e-9 USD).

Prices come from the configuration as decimal numbers per 1,000 tokens (or per million, or per
token). Each is converted once, exactly, to atto-dollars (1e-18 USD) per token; a request's cost
is then integer arithmetic, rounded half up to nano-dollars once. The ledger adds those integers,
so its totals equal the sum of the per-request costs, exactly, in any order and on any machine.
"""

from __future__ import annotations

from decimal import ROUND_HALF_UP, Decimal
from typing import NamedTuple

from truckllm.config.schema import Pricing

NANOS_PER_USD = 1_000_000_000
_ATTO_PER_NANO = 1_000_000_000
_UNIT_TOKENS = {"per_1k_tokens": 1_000, "per_1m_tokens": 1_000_000, "per_token": 1}


class Rates(NamedTuple):
    """Atto-dollars per token."""

    input: int
    cached: int
    output: int
    creation: int  # prompt tokens written to the provider's cache
    image: int = 0  # atto-dollars per image
    second: int = 0  # per second of audio
    character: int = 0  # per character of speech input


def _atto(price: float, tokens_per_unit: int) -> int:
    # repr() is the shortest decimal that reads back as the same float: what the user wrote.
    value = Decimal(repr(price)) * 10**18 / tokens_per_unit
    return int(value.to_integral_value(ROUND_HALF_UP))


def rates_of(pricing: Pricing) -> Rates:
    per = _UNIT_TOKENS[pricing.unit]
    cached = (
        pricing.input_token_cost
        if pricing.cached_input_token_cost is None
        else pricing.cached_input_token_cost
    )
    creation = (
        pricing.input_token_cost
        if pricing.cache_creation_input_token_cost is None
        else pricing.cache_creation_input_token_cost
    )
    return Rates(
        _atto(pricing.input_token_cost, per),
        _atto(cached, per),
        _atto(pricing.output_token_cost, per),
        _atto(creation, per),
        _atto(pricing.image_cost, 1),
        _atto(pricing.audio_second_cost, 1),
        _atto(pricing.character_cost, 1_000_000),
    )


def cost_nanos(
    rates: Rates,
    prompt: int,
    completion: int,
    cached: int = 0,
    created: int = 0,
    units: tuple[int, float, int] = (0, 0.0, 0),
) -> int:
    """A request's cost. Cache reads (``cached``) and cache writes (``created``), both part of
    ``prompt``, use their own prices; ``units`` are the images, audio seconds and speech
    characters it used."""
    cached = min(max(cached, 0), prompt)
    created = min(max(created, 0), prompt - cached)
    fresh = prompt - cached - created
    atto = (
        fresh * rates.input
        + cached * rates.cached
        + created * rates.creation
        + completion * rates.output
    )
    images, seconds, characters = units
    if images or seconds or characters:
        atto += images * rates.image + characters * rates.character
        atto += int((Decimal(repr(float(seconds))) * rates.second).to_integral_value(ROUND_HALF_UP))
    return (atto + _ATTO_PER_NANO // 2) // _ATTO_PER_NANO


def usd_to_nanos(usd: float) -> int:
    """A configured amount (a budget) in nano-dollars."""
    return int((Decimal(repr(usd)) * NANOS_PER_USD).to_integral_value(ROUND_HALF_UP))


def format_usd(nanos: int) -> str:
    """Exact decimal text: ``1500`` -> ``"0.0000015"``; ``0`` -> ``"0"``."""
    sign = "-" if nanos < 0 else ""
    whole, frac = divmod(abs(nanos), NANOS_PER_USD)
    text = f"{whole}.{frac:09d}".rstrip("0").rstrip(".")
    return sign + text
