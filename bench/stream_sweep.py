"""The streaming benchmark at several token rates, 1,000 streams each: added delay against load.

``streaming.py`` measures one load. This runs it at ``--rates`` tokens a second per stream (one
token per event, each stream lasting ``--seconds``), so the aggregate event rate climbs from a
few thousand to ``streams x rate`` a second, and reports for each: what the gateway adds to the
gap between chunks and to their transit, the cores each of the three processes (mock, load
generator, gateway) kept busy, and the gateway's CPU per chunk. One run per rate: the spread
between neighbouring points is the run-to-run variation of a p99 over one short run.

    python bench/stream_sweep.py [--streams 1000] [--rates 5,10,15,20] [--json out.json]
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from common import run_and_report
from streaming import add_run_options
from streaming import bench as stream_bench


def sweep(args: argparse.Namespace) -> dict[str, Any]:
    rows: list[dict[str, Any]] = []
    placement = ""
    for rate in args.rates:
        one = argparse.Namespace(
            streams=args.streams,
            rate=rate,
            tokens=max(1, round(rate * args.seconds)),
            ttft=0.1,
            burst=0.0,
            per_event=1,
            client=args.client,
            rounds=args.rounds,
            pin=args.pin,
            python=args.python,
            accept_queue=args.accept_queue,
        )
        print(f"sweep: {rate:g} tokens/s per stream", file=sys.stderr)
        r = stream_bench(one)
        placement = r["placement"]
        d, g = r["direct"], r["gateway"]
        rows.append(
            {
                "rate": rate,
                "events_per_s": args.streams * rate,
                "completed": g["completed"],
                "streams": g["streams"],
                "direct_gap_p99": d["gap_p99"],
                "gateway_gap_p99": g["gap_p99"],
                "added_gap_p50": r["added_gap_p50"],
                "added_gap_p99": r["added_gap_p99"],
                "added_transit_p50": r["added_transit_p50"],
                "added_transit_p99": r["added_transit_p99"],
                "cores_direct": r["cores"]["direct"],
                "cores_gateway": r["cores"]["gateway"],
                "other_cores_gateway": r["other_cores"]["gateway"],
                "gateway_cpu_per_1k_chunks_ms": r["gateway_cpu_per_1k_chunks_ms"],
                "gateway_peak_rss_mb": r["gateway_peak_rss_mb"],
            }
        )
    return {
        "streams": args.streams,
        "seconds": args.seconds,
        "client": args.client,
        "placement": placement,
        "rows": rows,
    }


def report(r: dict[str, Any]) -> str:
    lines = [
        f"{r['streams']:,} streams open at once, one token per event, each stream "
        f"{r['seconds']:g} s long; {r['client']} load generator; {r['placement']}. "
        "*Cores busy* is the average "
        "over the run of each process's CPU time (of 2 cores), for the gateway run: mock + load "
        "generator + gateway; *other* is what the rest of the machine (other processes, kernel "
        "threads, interrupt work) kept busy during the gateway run. Times in ms.\n",
        "| tokens/s per stream | events/s | completed | gap p99 direct | gap p99 gateway | "
        "**added gap p99** | added transit p50 / p99 | cores busy (direct run) | "
        "cores busy (gateway run) | other | gateway CPU per 1,000 chunks |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in r["rows"]:
        cd, cg = row["cores_direct"], row["cores_gateway"]
        lines.append(
            f"| {row['rate']:g} | {row['events_per_s']:,.0f} | "
            f"{row['completed']:,}/{row['streams']:,} | {row['direct_gap_p99']:.2f} | "
            f"{row['gateway_gap_p99']:.2f} | **{row['added_gap_p99']:+.2f}** | "
            f"{row['added_transit_p50']:+.2f} / {row['added_transit_p99']:+.2f} | "
            f"{sum(cd.values()):.2f} | {cg['mock']:.2f} + {cg['load generator']:.2f} + "
            f"{cg['gateway']:.2f} = {sum(cg.values()):.2f} | "
            f"{row['other_cores_gateway']:.2f} | "
            f"{row['gateway_cpu_per_1k_chunks_ms']:.0f} ms |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--streams", type=int, default=1000)
    p.add_argument(
        "--rates",
        type=lambda text: [float(x) for x in text.split(",") if x],
        default=[5.0, 10.0, 15.0, 20.0],
        help="tokens/s per stream, comma-separated",
    )
    p.add_argument("--seconds", type=float, default=4.0, help="length of each stream")
    add_run_options(p)
    return run_and_report(sweep, report, p.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
