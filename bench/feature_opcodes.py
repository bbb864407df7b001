"""Python bytecodes per request by function, for one of ``features.py``'s configurations: the
same in-process app and canned provider, run under a ``sys.settrace`` opcode counter (about
thirtyfold slower: the counts are what matters, not the time). With ``--against``, the
difference from another configuration, largest first: what a feature adds, function by function.

Usage (from ``bench/``)::

    python feature_opcodes.py on --against off [--requests 300] [--top 30]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
from collections import Counter
from pathlib import Path
from types import FrameType
from typing import Any

import features

Counts = dict[tuple[str, int, str], float]


def count(name: str, requests: int) -> Counts:
    """Bytecodes per request by (file, first line, function) for configuration ``name``."""
    counts: Counter[tuple[str, int, str]] = Counter()

    def local(frame: FrameType, event: str, arg: Any) -> Any:
        if event == "opcode":
            code = frame.f_code
            where = code.co_filename.split("/src/")[-1].split("/lib/python3")[-1]
            counts[(where, code.co_firstlineno, code.co_name)] += 1
        return local

    def tracer(frame: FrameType, event: str, arg: Any) -> Any:
        if event == "call":
            frame.f_trace_opcodes = True
            return local
        return None

    async def run(tmp: Path) -> None:
        config = tmp / "gateway.yaml"
        config.write_text(
            features.config_text("http://127.0.0.1:9/v1", tmp, features.CONFIGS[name])
        )
        h = features.Harness(config)
        await h.app.start()
        try:
            await h.loop(500)  # warm: caches filled, the interpreter's specializations made
            sys.settrace(tracer)
            try:
                await h.loop(requests)
            finally:
                sys.settrace(None)
        finally:
            await h.app.close()

    with tempfile.TemporaryDirectory(prefix="truckllm-opcodes-") as tmpdir:
        asyncio.run(run(Path(tmpdir)))
    return {k: v / requests for k, v in counts.items()}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("config", choices=list(features.CONFIGS))
    p.add_argument("--against", choices=list(features.CONFIGS))
    p.add_argument("--requests", type=int, default=300)
    p.add_argument("--top", type=int, default=30)
    args = p.parse_args(argv)
    mine = count(args.config, args.requests)
    base = count(args.against, args.requests) if args.against else {}
    diff = {k: mine.get(k, 0.0) - base.get(k, 0.0) for k in mine.keys() | base.keys()}
    total = sum(diff.values())
    what = f"{args.config} less {args.against}" if args.against else args.config
    print(f"{what}: {total:,.0f} bytecodes per request")
    for (where, line, func), n in sorted(diff.items(), key=lambda kv: -abs(kv[1]))[: args.top]:
        print(f"{n:9.1f}  {where}:{line} {func}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
