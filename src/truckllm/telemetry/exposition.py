"""Writing the Prometheus text exposition format (version 0.0.4) by hand.

Small on purpose: families with HELP and TYPE, samples with escaped label values, and values
formatted as Prometheus reads them (``+Inf``, ``NaN``).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

Labels = Sequence[tuple[str, str]]


def escape(value: str) -> str:
    """A label value inside double quotes."""
    if "\\" in value or '"' in value or "\n" in value:
        value = value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return value


def number(value: float) -> str:
    if isinstance(value, int):
        return str(value)
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if math.isnan(value):
        return "NaN"
    if value.is_integer() and abs(value) < 1e15:
        return str(int(value))
    return repr(value)


def labels(pairs: Labels) -> str:
    """``{a="x",b="y"}``, or the empty string without labels."""
    if not pairs:
        return ""
    return "{" + ",".join(f'{k}="{escape(v)}"' for k, v in pairs) + "}"


class Page:
    """One scrape's page, built family by family."""

    def __init__(self) -> None:
        self._lines: list[str] = []

    def family(self, name: str, kind: str, help_text: str) -> None:
        """Start a family. ``name`` is the samples' name (a counter's ends in ``_total``; a
        histogram's is the base of its ``_bucket``, ``_sum`` and ``_count``)."""
        self._lines.append(f"# HELP {name} {help_text}")
        self._lines.append(f"# TYPE {name} {kind}")

    def sample(self, name: str, pairs: Labels, value: float) -> None:
        self._lines.append(f"{name}{labels(pairs)} {number(value)}")

    def histogram(
        self,
        name: str,
        pairs: Labels,
        bounds: Sequence[float],
        counts: Iterable[int],
        total: float,
    ) -> None:
        """``counts`` per bucket, not cumulative, the last one above every bound (``+Inf``)."""
        running = 0
        for bound, n in zip((*bounds, math.inf), counts, strict=True):
            running += n
            self.sample(f"{name}_bucket", (*pairs, ("le", number(float(bound)))), running)
        self.sample(f"{name}_sum", pairs, total)
        self.sample(f"{name}_count", pairs, running)

    def render(self) -> bytes:
        return ("\n".join(self._lines) + "\n").encode()
