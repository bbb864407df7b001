"""Balancer benchmarks: the cost of one pick (10 and 1,000 keys, every strategy) and the
slow-key/failing-key scenario under round_robin against adaptive.

    python bench/balancer.py [--picks 20000] [--scenario-requests 300]
"""

from __future__ import annotations

import argparse
import random
import time

from truckllm.config import parse_config
from truckllm.routing import Estimate, Outcome, OutcomeKind, Pick, Router
from truckllm.routing.strategies import STRATEGIES
from truckllm.testing.loop import LoopThread
from truckllm.testing.simulate import slow_and_flaky


def router_with(keys: int, strategy: str, limits: bool) -> Router:
    limit = "limits: {rpm: 1000000, tpm: 100000000}" if limits else ""
    lines = "\n".join(
        f"      - {{id: k{i}, secret: s{i}, weight: {1 + i % 3}, {limit}}}" for i in range(keys)
    )
    cfg = parse_config(
        f"providers:\n  - id: p\n    base_url: http://x\n    keys:\n{lines}\n", "<bench>", {}
    )
    return Router(cfg.providers, default_strategy=strategy, rng=random.Random(1))


def time_pick(keys: int, strategy: str, picks: int, limits: bool) -> float:
    """Microseconds per pick + done (reserve, report, learn) with warm state."""
    router = router_with(keys, strategy, limits)
    est = Estimate(200, 200)
    ok = Outcome(OutcomeKind.SUCCESS, 200, 0.1)
    for _ in range(min(picks, 2000)):  # warm: every key gets figures
        p = router.pick(["p"], est)
        assert isinstance(p, Pick)
        p.done(ok)
    t0 = time.perf_counter()
    for _ in range(picks):
        p = router.pick(["p"], est)
        assert isinstance(p, Pick)
        p.done(ok)
    return (time.perf_counter() - t0) / picks * 1e6


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--picks", type=int, default=20000)
    ap.add_argument("--scenario-requests", type=int, default=300)
    ns = ap.parse_args()
    print("## One pick (pick + done), microseconds\n")
    print("| strategy | 10 keys | 1,000 keys | 1,000 keys with rpm+tpm limits |")
    print("|---|---:|---:|---:|")
    for strategy in STRATEGIES:
        row = [
            time_pick(10, strategy, ns.picks, False),
            time_pick(1000, strategy, ns.picks // 4, False),
            time_pick(1000, strategy, ns.picks // 4, True),
        ]
        print(f"| {strategy} | " + " | ".join(f"{v:.1f}" for v in row) + " |")
    print("\n## Slow key (150 ms) and failing key (30% 500s) beside a healthy one\n")
    print(f"{ns.scenario_requests} requests, 6 in flight, through the gateway over loopback.\n")
    print("| strategy | succeeded | p50 ms | p99 ms | failed attempts | share on the healthy key |")
    print("|---|---:|---:|---:|---:|---:|")
    loop = LoopThread()
    try:
        for strategy in ("round_robin", "adaptive"):
            r = slow_and_flaky(strategy, loop, n=ns.scenario_requests)
            print(
                f"| {strategy} | {r['ok']:.0f} | {r['p50_ms']:.1f} | {r['p99_ms']:.1f} | "
                f"{r['failed_attempts']:.0f} | {r['share_fast']:.0%} |"
            )
    finally:
        loop.stop()


if __name__ == "__main__":
    main()
