"""How many connections wait in a listening socket's accept queue: the kernel has completed
their handshake, the process has not accepted them yet. A stream's TTFT at the client counts from
its connect, so time spent in this queue is TTFT that the gateway's own request log (whose clock
starts once the request is read) does not see.

Sampled with ``ss -ltnH sport = :PORT`` (iproute2; its ``Recv-Q`` of a listening socket is the
accept queue) every ``interval`` seconds in a thread of the benchmark's parent process. Opt-in
(``streaming.py --accept-queue``): each sample spawns ``ss``, which takes a little CPU from the
machine the benchmark measures.
"""

from __future__ import annotations

import shutil
import subprocess
import threading
from typing import Any


class AcceptQueue:
    """Samples the accept queues of some ports while ``with`` is open."""

    def __init__(self, ports: dict[str, int], interval: float = 0.1) -> None:
        if shutil.which("ss") is None:
            raise RuntimeError("--accept-queue needs ss (iproute2)")
        self.ports = ports
        self.interval = interval
        self.samples: dict[str, list[int]] = {name: [] for name in ports}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> AcceptQueue:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            for name, port in self.ports.items():
                out = subprocess.run(
                    ["ss", "-ltnH", f"sport = :{port}"], capture_output=True, text=True, check=False
                ).stdout.split()
                if len(out) >= 2 and out[1].isdigit():
                    self.samples[name].append(int(out[1]))

    @staticmethod
    def summarise(values: list[int]) -> dict[str, Any]:
        """Samples taken, how many found a connection waiting, p50, p90 and the peak."""
        v = sorted(values)
        n = len(v)
        return {
            "samples": n,
            "nonzero": sum(1 for x in v if x),
            "p50": v[n // 2] if n else 0,
            "p90": v[int(n * 0.9)] if n else 0,
            "max": v[-1] if n else 0,
        }
