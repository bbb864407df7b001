"""The OTLP protobuf wire format of traces, written directly: ``ExportTraceServiceRequest`` as the
``opentelemetry-proto`` schema defines it (tests decode this module's output with the official
classes). It encodes what the gateway's spans hold: ids, name, kind, times, attributes (strings,
booleans, integers, floats, sequences of them), status, resource and scope.

Written by hand because it is on the gateway's CPU budget: the OpenTelemetry SDK's encoder builds
a protobuf object per attribute, about 60 µs a span; this one takes a few µs, most attributes
coming from a cache (a gateway's spans repeat their model, provider, key, status...).
"""

from __future__ import annotations

import struct
from collections.abc import Mapping, Sequence
from typing import Any

SERVER, CLIENT = 2, 3  # Span.SpanKind
_MASK64 = (1 << 64) - 1
_BYTE = [bytes((i,)) for i in range(256)]
_pack_double = struct.Struct("<d").pack
_pack_fixed64 = struct.Struct("<Q").pack
_CACHE_LIMIT = 4096


def varint(n: int) -> bytes:
    if n < 0x80:
        return _BYTE[n]
    out = bytearray()
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _field(tag: int, payload: bytes) -> bytes:
    """A length-delimited field (``tag``: field number << 3 | 2, one byte)."""
    n = len(payload)
    return _BYTE[tag] + (_BYTE[n] if n < 0x80 else varint(n)) + payload


def any_value(v: Any) -> bytes:
    """An ``AnyValue`` message's payload."""
    if isinstance(v, str):
        return _field(0x0A, v.encode())
    if isinstance(v, bool):
        return b"\x10\x01" if v else b"\x10\x00"
    if isinstance(v, int):
        return b"\x18" + varint(v & _MASK64)
    if isinstance(v, float):
        return b"\x21" + _pack_double(v)
    if isinstance(v, bytes):
        return _field(0x3A, v)
    if isinstance(v, Sequence):
        return _field(0x2A, b"".join(_field(0x0A, any_value(x)) for x in v))
    return _field(0x0A, str(v).encode())


VOLATILE = frozenset(
    {
        "truckllm.request_id",
        "client.address",
        "gen_ai.input.messages",
        "gen_ai.output.messages",
        "gen_ai.system_instructions",
    }
)
"""Attributes whose values are (nearly) never repeated: not worth caching."""


class Encoder:
    """Encodes spans. Caches each attribute key's bytes, and whole attributes whose value is a
    string or a small integer. Not thread-safe: one per exporter."""

    def __init__(self, volatile: frozenset[str] = VOLATILE) -> None:
        self._keys: dict[str, bytes] = {}
        self._pairs: dict[int, dict[tuple[str, Any], bytes]] = {0x0A: {}, 0x4A: {}}
        self._volatile = volatile

    def attributes(self, tag: int, attrs: Mapping[str, Any]) -> bytes:
        """``KeyValue`` fields numbered ``tag`` (one byte, length-delimited)."""
        pairs, out = self._pairs[tag], []
        for item in attrs.items():
            try:
                kv = pairs.get(item)
            except TypeError:  # an unhashable value (a list)
                kv = None
            if kv is None:
                key, value = item
                kv = _field(tag, self._kv(key, value))
                t = type(value)  # (not bool: True == 1 would share an entry with the int)
                if (t is str or (t is int and 0 <= value < 1024)) and key not in self._volatile:
                    if len(pairs) >= _CACHE_LIMIT:
                        pairs.clear()
                    pairs[item] = kv
            out.append(kv)
        return b"".join(out)

    def _kv(self, key: str, value: Any) -> bytes:
        """A ``KeyValue`` message's payload."""
        k = self._keys.get(key)
        if k is None:
            k = self._keys[key] = _field(0x0A, key.encode())
        return k + _field(0x12, any_value(value))

    def span(
        self,
        ids: tuple[int, int, int | None],
        name: str,
        kind: int,
        times: tuple[int, int],
        attrs: Mapping[str, Any],
        error: bool,
    ) -> bytes:
        """A ``Span`` message's payload: ``ids`` (trace, span, parent or None), ``times`` (start,
        end) in unix nanoseconds, ``error`` its status (ERROR, else UNSET)."""
        trace_id, span_id, parent_id = ids
        parent = b"" if parent_id is None else b"\x22\x08" + parent_id.to_bytes(8, "big")
        return b"".join(
            (
                b"\x0a\x10" + trace_id.to_bytes(16, "big"),
                b"\x12\x08" + span_id.to_bytes(8, "big"),
                parent,
                _field(0x2A, name.encode()),
                b"\x30" + _BYTE[kind],
                b"\x39" + _pack_fixed64(times[0]),
                b"\x41" + _pack_fixed64(times[1]),
                self.attributes(0x4A, attrs),
                b"\x7a\x02\x18\x02" if error else b"",  # status {code: STATUS_CODE_ERROR}
            )
        )

    def resource(self, attrs: Mapping[str, Any], scope: tuple[str, str]) -> tuple[bytes, bytes]:
        """The ``resource`` field of ``ResourceSpans`` and the ``scope`` field of ``ScopeSpans``
        (name, version), for :func:`request`."""
        name, version = scope
        return (
            _field(0x0A, self.attributes(0x0A, attrs)),
            _field(0x0A, _field(0x0A, name.encode()) + _field(0x12, version.encode())),
        )


def request(head: tuple[bytes, bytes], spans: Sequence[bytes]) -> bytes:
    """An ``ExportTraceServiceRequest`` of ``spans`` (payloads from :meth:`Encoder.span`), all
    of the resource and scope in ``head`` (from :meth:`Encoder.resource`)."""
    resource, scope = head
    body = b"".join(_field(0x12, s) for s in spans)
    return _field(0x0A, resource + _field(0x12, scope + body))
