"""``multipart/form-data`` as an upload goes by: the text fields the gateway needs (``model``,
``stream``) found without holding the form, and the form sent on with one field's value
replaced, as a :class:`~truckllm.http.client.BodySource` over the upload.

:class:`FormScanner` is fed the body in pieces of any size and keeps only an unfinished part's
header block, the value of a wanted text field (at most ``MAX_VALUE`` bytes) and, inside a file
part, the last bytes that may begin a boundary: never a file."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass

from truckllm.http.client import BodySource

MAX_HEAD = 1024  # a form part's headers: a Content-Disposition line and a Content-Type
MAX_VALUE = 4096  # a wanted text field's value
_SEEK, _AFTER, _HEAD, _END = range(4)


def boundary_of(content_type: str) -> bytes | None:
    """The boundary of a ``multipart/form-data`` content type, or None."""
    kind, _, params = content_type.partition(";")
    if kind.strip().lower() != "multipart/form-data":
        return None
    for param in params.split(";"):
        name, _, value = param.strip().partition("=")
        if name.strip().lower() == "boundary":
            value = value.strip().strip('"')
            return value.encode("latin-1") if 0 < len(value) <= 70 else None
    return None


@dataclass(frozen=True, slots=True)
class Field:
    start: int  # where the value lies in the body
    end: int
    value: bytes


class FormScanner:
    """The text fields named in ``wanted`` (not file parts), with where their values lie in the
    whole body, found as the body is fed (:meth:`feed`). ``done``: the closing boundary was
    seen, or the form is malformed (nothing more will be found)."""

    def __init__(self, boundary: bytes, wanted: tuple[str, ...]) -> None:
        self._delimiter = b"\r\n--" + boundary
        self._wanted = {f'name="{n}"'.encode(): n for n in wanted}
        # The body as if it began with CRLF, so a first boundary at its very start is found as
        # any other delimiter; ``_base`` is where ``_buf[0]`` lies in the body.
        self._buf = bytearray(b"\r\n")
        self._base = -2
        self._state = _SEEK
        self._current: str | None = None  # the wanted field whose value is being read
        self.fields: dict[str, Field] = {}

    @property
    def done(self) -> bool:
        return self._state == _END

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        if self._state == _END:
            return
        self._buf += data
        while self._step():
            pass

    def _drop(self, n: int) -> None:
        del self._buf[:n]
        self._base += n

    def _step(self) -> bool:
        """One move of the scanner; False when it needs more bytes."""
        buf = self._buf
        if self._state == _SEEK:
            at = buf.find(self._delimiter)
            if at < 0:
                if self._current is None:  # a file or the preamble: keep only a boundary's start
                    self._drop(max(0, len(buf) - len(self._delimiter) + 1))
                elif len(buf) > MAX_VALUE + len(self._delimiter):
                    self._current = None  # too long to be what we look for
                return False
            if self._current is not None and self._current not in self.fields:
                start = self._base
                self.fields[self._current] = Field(start, start + at, bytes(buf[:at]))
            self._current = None
            self._drop(at + len(self._delimiter))
            self._state = _AFTER
            return True
        if self._state == _AFTER:
            if len(buf) < 2:
                return False
            if buf.startswith(b"--"):
                self._state = _END
                return False
            self._state = _HEAD
            return True
        end = buf.find(b"\r\n\r\n")
        if end < 0:
            if len(buf) > MAX_HEAD:
                self._state = _END
            return False
        head = bytes(buf[:end]).lower()
        if b"filename=" not in head:
            for token, name in self._wanted.items():
                if token in head:
                    self._current = name
        self._drop(end + 4)
        self._state = _SEEK
        return True


@dataclass(frozen=True, slots=True)
class Replaced:
    """``body`` with the bytes between ``start`` and ``end`` replaced by ``value`` (a form's
    ``model`` field when the route names another model), read as ``body`` is."""

    body: BodySource
    start: int
    end: int
    value: bytes

    @property
    def length(self) -> int:
        return self.body.length - (self.end - self.start) + len(self.value)

    async def chunks(self) -> AsyncIterator[bytes | bytearray | memoryview]:
        at = 0
        async for chunk in self.body.chunks():
            view = memoryview(chunk).cast("B")
            lo, hi = at, at + len(view)
            at = hi
            if hi <= self.start or lo >= self.end:  # (a field's value is never empty here)
                yield view
                continue
            if lo <= self.start:
                yield view[: self.start - lo]
                yield self.value
            if hi > self.end:
                yield view[self.end - lo :]


@dataclass(frozen=True, slots=True)
class Form:
    """An upload's body and where its ``model`` field's value lies in it."""

    body: BodySource
    model: Field

    def with_model(self, model: str) -> BodySource:
        """The body to send when the route names ``model``: as it came, or with the field's
        value replaced (the length follows)."""
        value = model.encode()
        if value == self.model.value:
            return self.body
        return Replaced(self.body, self.model.start, self.model.end, value)
