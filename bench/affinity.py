"""Prompt-cache affinity: what keeping a conversation on one key saves.

The mock (in this process) plays OpenAI with a prompt cache per key, as the real one has: a
prompt whose prefix the same key has seen reports the repeated part as
``usage.prompt_tokens_details.cached_tokens`` (from 1,024 tokens on), billed at a quarter of
the input price. A client runs multi-turn conversations (one system prompt shared by all, a
first message of its own, then turn after turn, each repeating the conversation so far) through
a gateway process over four keys, ``routing.affinity`` off then on. Reported per mode: the share
of prompt tokens read from the providers' caches, the distinct keys a conversation touched, and
the cost per 1,000 conversations (the gateway's own ``x-truckllm-cost-usd``, summed).

    python bench/affinity.py [--conversations 200] [--turns 8] [--concurrency 16] [--json FILE]
"""

from __future__ import annotations

import argparse
import asyncio
import random
import tempfile
from pathlib import Path
from typing import Any

from common import BenchError, default_python, run_and_report, start_gateway

from truckllm.testing.behaviour import Dist, KeyBehaviour
from truckllm.testing.loop import LoopThread
from truckllm.testing.mock_server import MockServer

KEYS = 4
# USD per 1M tokens: input, cached input (a quarter), output.
PRICING = "{input_token_cost: 2.0, cached_input_token_cost: 0.5, output_token_cost: 8.0, unit: per_1m_tokens}"
SYSTEM = ("You are a meticulous assistant for a logistics company. " * 110).strip()


def gateway_yaml(url: str, affinity: bool, strategy: str) -> str:
    keys = ", ".join(f"{{id: k{i}, secret: sk-{i}, pricing: {PRICING}}}" for i in range(KEYS))
    return (
        f"providers:\n  - {{id: oa, type: openai, base_url: '{url}/v1', models: [m], "
        f"keys: [{keys}]}}\n"
        f"routing: {{strategy: {strategy}, affinity: {{enabled: {str(affinity).lower()}}}}}\n"
        "metrics: {enabled: false}\n"
    )


async def converse(url: str, args: argparse.Namespace) -> list[dict[str, Any]]:
    import aiohttp

    rng = random.Random(args.seed)
    firsts = [
        f"Shipment {i}: " + " ".join(rng.choice(["route", "pallet", "dock", "crate", "lorry"])
                                      for _ in range(60))
        for i in range(args.conversations)
    ]  # fmt: skip
    jobs = iter(range(args.conversations))
    out: list[dict[str, Any]] = []
    async with aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=args.concurrency),
        timeout=aiohttp.ClientTimeout(total=60),
    ) as session:

        async def worker() -> None:
            for c in jobs:
                msgs: list[dict[str, Any]] = [
                    {"role": "system", "content": SYSTEM},
                    {"role": "user", "content": firsts[c]},
                ]
                keys, prompt, cached, cost = set(), 0, 0, 0.0
                for t in range(args.turns):
                    body = {"model": "m", "messages": msgs, "max_tokens": 64}
                    async with session.post(url, json=body) as resp:
                        data = await resp.json()
                        if resp.status != 200:
                            raise BenchError(f"turn {t}: {resp.status} {data}")
                        keys.add(resp.headers["x-truckllm-key-id"])
                        cost += float(resp.headers.get("x-truckllm-cost-usd", "0"))
                    usage = data["usage"]
                    prompt += usage["prompt_tokens"]
                    cached += usage["prompt_tokens_details"]["cached_tokens"]
                    answer = data["choices"][0]["message"]["content"]
                    msgs = [
                        *msgs,
                        {"role": "assistant", "content": answer},
                        {"role": "user", "content": f"And for step {t + 1}? " * 8},
                    ]
                out.append({"keys": len(keys), "prompt": prompt, "cached": cached, "cost": cost})

        await asyncio.gather(*(worker() for _ in range(args.concurrency)))
    return out


def run_mode(args: argparse.Namespace, affinity: bool, tmp: Path) -> dict[str, Any]:
    loop = LoopThread("affinity-mock")
    latency = KeyBehaviour(latency=Dist.lognormal(0.01, 0.05), reply_tokens=60)
    mock = MockServer(latency, seed=args.seed, prompt_cache=True, reply_words=60)
    gateway = None
    try:
        url = loop.run(mock.start())
        config = tmp / f"gateway-{affinity}.yaml"
        config.write_text(gateway_yaml(url, affinity, args.strategy))
        gateway = start_gateway(args.python, config, tmp, name=f"gateway-{affinity}")
        convs = asyncio.run(converse(gateway.base + "/v1/chat/completions", args))
    finally:
        if gateway is not None:
            gateway.stop()
        loop.run(mock.stop())
        loop.stop()
    prompt = sum(c["prompt"] for c in convs)
    cached = sum(c["cached"] for c in convs)
    cost = sum(c["cost"] for c in convs)
    return {
        "affinity": affinity,
        "conversations": len(convs),
        "requests": len(convs) * args.turns,
        "prompt_tokens": prompt,
        "cached_tokens": cached,
        "cached_share": cached / max(prompt, 1),
        "keys_per_conversation": sum(c["keys"] for c in convs) / max(len(convs), 1),
        "cost_per_1000": cost / max(len(convs), 1) * 1000,
    }


def bench(args: argparse.Namespace) -> dict[str, Any]:
    tmp = Path(tempfile.mkdtemp(prefix="truckllm-affinity-"))
    modes = [run_mode(args, False, tmp), run_mode(args, True, tmp)]
    return {"turns": args.turns, "strategy": args.strategy, "keys": KEYS, "modes": modes}


def report(r: dict[str, Any]) -> str:
    off, on = r["modes"]
    lines = [
        f"{off['conversations']} conversations of {r['turns']} turns over {r['keys']} keys "
        f"(strategy {r['strategy']}); input $2.00, cached input $0.50, output $8.00 per 1M "
        "tokens.\n",
        "| affinity | requests | prompt tokens | read from the prompt cache | keys per "
        "conversation | cost per 1,000 conversations |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for m in (off, on):
        lines.append(
            f"| {'on' if m['affinity'] else 'off'} | {m['requests']:,} | {m['prompt_tokens']:,} "
            f"| {m['cached_share']:.1%} | {m['keys_per_conversation']:.2f} "
            f"| ${m['cost_per_1000']:.2f} |"
        )
    saved = 1 - on["cost_per_1000"] / off["cost_per_1000"] if off["cost_per_1000"] else 0.0
    lines.append(f"\nAffinity saves {saved:.1%} of the cost.")
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--conversations", type=int, default=200)
    p.add_argument("--turns", type=int, default=8)
    p.add_argument("--concurrency", type=int, default=16)
    p.add_argument("--strategy", default="adaptive")
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--python", default=default_python())
    p.add_argument("--json", type=Path)
    return run_and_report(bench, report, p.parse_args())


if __name__ == "__main__":
    raise SystemExit(main())
