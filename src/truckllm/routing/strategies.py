"""Selection strategies: which of a provider's eligible keys serves the next attempt.

Every strategy picks among keys that are eligible right now (not disabled, not cooling, not out of
service, breaker closed, room under every limit for this request's estimate).

- ``round_robin``: the next eligible key in order.
- ``weighted``: smooth weighted round robin (nginx's): over any run of picks each key's share
  is proportional to its ``weight``, interleaved rather than in bursts.
- ``least_loaded``: the fewest requests in flight per unit of weight.
- ``lowest_latency``: the lowest moving average of time to first byte; keys never measured go first.
- ``lowest_cost``: the lowest price for this request's estimated tokens; ties go to the least loaded.
- ``adaptive`` (default): power of two choices on :func:`adaptive_score`: two random eligible keys
  are compared and the better one wins with probability ``b**2 / (a**2 + b**2)`` (scores ``a``,
  ``b``; lower is better). The randomness spreads load so no single best key takes everything, and
  explores keys whose figures are stale.
"""

from __future__ import annotations

from typing import Literal

from truckllm.routing.estimate import Estimate
from truckllm.routing.keystate import KeyState

StrategyName = Literal[
    "round_robin", "weighted", "least_loaded", "lowest_latency", "lowest_cost", "adaptive"
]
STRATEGIES: tuple[str, ...] = (
    "round_robin",
    "weighted",
    "least_loaded",
    "lowest_latency",
    "lowest_cost",
    "adaptive",
)

DEFAULT_LATENCY_S = 0.5  # assumed for a key never measured when no other key has a figure
LATENCY_FLOOR_S = 0.05  # added to every latency: a few ms of difference is noise for LLM calls


def request_cost(state: KeyState, est: Estimate) -> float:
    return state.key.pricing.cost_usd(est.prompt_tokens, est.output_tokens)


def adaptive_score(
    state: KeyState,
    now: float,
    est: Estimate,
    prior_latency: float,
    cheapest: float,
    own_cost: float | None = None,
) -> float:
    """Lower is better: expected latency, inflated by queueing, errors, lack of headroom and price.

    ``(latency + 50 ms) * (1 + in_flight/weight/4) / success_rate**4 / (0.25 + 0.75*headroom)
    * price**0.5`` where ``price`` is this key's cost for the request over the cheapest
    candidate's (1 when free). Providers serve requests in parallel, so load counts lightly; a
    failure costs a whole extra attempt, so errors count heavily (30% errors: about 4x).
    """
    latency = (state.latency_s if state.latency_s is not None else prior_latency) + LATENCY_FLOOR_S
    load = 1.0 + 0.25 * state.in_flight / state.key.weight
    health = max(state.success_rate, 0.05) ** 2
    room = 0.25 + 0.75 * state.headroom(now, est.total)
    score = latency * load / (health * health * room)
    if cheapest > 0:
        cost = request_cost(state, est) if own_cost is None else own_cost
        score *= (cost / cheapest) ** 0.5
    return score


def choose_exact(strategy: str, eligible: list[KeyState], est: Estimate, start: int) -> KeyState:
    """Strategies that look at every eligible key. ``start`` rotates tie-breaking."""
    n = len(eligible)
    if strategy == "weighted":
        total = 0.0
        best = eligible[0]
        for s in eligible:
            s.rr_weight += s.key.weight
            total += s.key.weight
            if s.rr_weight > best.rr_weight:
                best = s
        best.rr_weight -= total
        return best
    order = [eligible[(start + i) % n] for i in range(n)]
    if strategy == "least_loaded":
        return min(order, key=lambda s: s.in_flight / s.key.weight)
    if strategy == "lowest_latency":
        return min(order, key=lambda s: -1.0 if s.latency_s is None else s.latency_s)
    if strategy == "lowest_cost":
        return min(order, key=lambda s: (request_cost(s, est), s.in_flight / s.key.weight))
    return order[0]
