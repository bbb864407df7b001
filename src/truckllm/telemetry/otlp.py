"""The OTLP protobuf wire format of traces, written directly: ``ExportTraceServiceRequest`` as the
``opentelemetry-proto`` schema defines it (tests decode this module's output with the official
classes). It encodes what the gateway's spans hold: ids, name, kind, times, attributes (strings,
booleans, integers, floats, sequences of them), status, resource and scope.

Written by hand because it is on the gateway's CPU budget: the OpenTelemetry SDK's encoder builds
a protobuf object per attribute, about 60 µs a span; this one takes a few µs, the attributes that
repeat from span to span (model, provider, key, status...) coming from a cache as one block.
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


_CACHE_LIMIT = 4096


class Encoder:
    """Encodes spans. Caches each attribute key's bytes, and each set of stable attributes whole
    (a gateway's spans repeat their model, provider, key, status...). Not thread-safe: one per
    exporter."""

    def __init__(self) -> None:
        self._keys: dict[str, bytes] = {}
        self._blocks: dict[tuple[tuple[str, Any], ...], bytes] = {}

    def attributes(self, tag: int, attrs: Mapping[str, Any]) -> bytes:
        """``KeyValue`` fields numbered ``tag`` (one byte, length-delimited)."""
        return b"".join(_field(tag, self._kv(key, value)) for key, value in attrs.items())

    def stable(self, attrs: tuple[tuple[str, Any], ...]) -> bytes:
        """A span's ``KeyValue`` fields for (name, value) pairs (None: absent), from the cache."""
        block = self._blocks.get(attrs)
        if block is None:
            if len(self._blocks) >= _CACHE_LIMIT:
                self._blocks.clear()
            block = self._blocks[attrs] = b"".join(
                _field(0x4A, self._kv(key, value)) for key, value in attrs if value is not None
            )
        return block

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
        attrs: tuple[tuple[tuple[str, Any], ...], Mapping[str, Any]],
        error: bool,
    ) -> bytes:
        """A ``Span`` message's payload: ``ids`` (trace, span, parent or None), ``times`` (start,
        end) in unix nanoseconds, ``attrs`` the stable attributes (:meth:`stable`) and the
        others, ``error`` its status (ERROR, else UNSET)."""
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
                self.stable(attrs[0]),
                self.attributes(0x4A, attrs[1]),
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
