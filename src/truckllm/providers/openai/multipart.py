"""``multipart/form-data`` as an upload goes by: the text fields the gateway needs (``model``)
found without holding the form, and the form sent on with one field's value
replaced, as a :class:`~truckllm.http.client.BodySource` over the upload.

:class:`FormScanner` is fed the body in pieces of any size and keeps only an unfinished part's
header block, the value of a wanted text field (at most ``MAX_VALUE`` bytes) and, inside a file
part, the last bytes that may begin a boundary: never a file."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from dataclasses import dataclass

from truckllm.http.client import BodySource
from truckllm.providers.base import RequestRejected
from truckllm.providers.errors import error_body

MAX_HEAD = 1024  # a form part's headers: a Content-Disposition line and a Content-Type
MAX_VALUE = 4096  # a wanted text field's value
_SEEK, _AFTER, _HEAD, _END = range(4)
# A part's ``name`` parameter, quoted or not (form parsers take both), in its lower-cased head.
_NAME = re.compile(rb'(?:^|[;\s])name\s*=\s*(?:"([^"]*)"|([^;\s]*))')
# ``name*=`` (RFC 5987/2231 extended notation, ``name*0=`` continuations too): RFC 7578 forbids
# it in forms, yet a parser upstream may read it as a field's name the scan never saw.
_EXTENDED_NAME = re.compile(rb"(?:^|[;\s])name\s*\*")
_QUOTED = re.compile(rb'"[^"]*"')


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
        self._wanted = {n.encode(): n for n in wanted}
        # The body as if it began with CRLF, so a first boundary at its very start is found as
        # any other delimiter; ``_base`` is where ``_buf[0]`` lies in the body.
        self._buf = bytearray(b"\r\n")
        self._base = -2
        self._state = _SEEK
        self._current: str | None = None  # the wanted field whose value is being read
        self.fields: dict[str, Field] = {}
        self.parts: dict[str, int] = {}  # parts naming each wanted field, file parts included
        self.malformed = False  # a part's head past MAX_HEAD: nothing after it was read
        self.extended_name = False  # a part named with ``name*=``: its name cannot be vouched for

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
                self._state, self.malformed = _END, True
            return False
        head = bytes(buf[:end]).lower()
        self.extended_name = self.extended_name or _extended(head)
        name = self._wanted.get(_name_of(head))
        if name is not None:
            self.parts[name] = self.parts.get(name, 0) + 1
            if b"filename=" not in head:
                self._current = name
        self._drop(end + 4)
        self._state = _SEEK
        return True


def _name_of(head: bytes) -> bytes:
    """The ``name`` of a part from its (lower-cased) head's Content-Disposition line."""
    for line in head.split(b"\r\n"):
        if line.startswith(b"content-disposition:"):
            found = _NAME.search(line, len(b"content-disposition:"))
            return (found[1] or found[2] or b"") if found else b""
    return b""


def _extended(head: bytes) -> bool:
    """Whether a part's (lower-cased) Content-Disposition has a ``name*`` parameter."""
    for line in head.split(b"\r\n"):
        if line.startswith(b"content-disposition:"):
            unquoted = _QUOTED.sub(b'""', line[len(b"content-disposition:") :])  # a filename's
            return _EXTENDED_NAME.search(unquoted) is not None  # text is not a parameter
    return False


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
class OneModel:
    """``body`` read through a :class:`FormScanner`: a form with a second ``model`` part (which
    the upstream may read instead of the one the gateway routed, checked and priced), a part
    named with ``name*=`` (one more way to spell it) or a form it cannot read to the end is
    refused (a 400, :class:`RequestRejected`) before its last bytes go upstream."""

    body: BodySource
    boundary: bytes

    @property
    def length(self) -> int:
        return self.body.length

    async def chunks(self) -> AsyncIterator[bytes | bytearray | memoryview]:
        scanner = FormScanner(self.boundary, ("model",))
        async for chunk in self.body.chunks():
            scanner.feed(chunk)
            if scanner.parts.get("model", 0) > 1:
                raise _refused("The form has more than one 'model' field.", "model")
            if scanner.malformed:
                raise _refused(f"A form part's headers exceed {MAX_HEAD} bytes.", None)
            if scanner.extended_name:
                raise _refused(
                    "A form part is named with 'name*=', which multipart/form-data does not "
                    "allow (RFC 7578): name it with 'name='.",
                    None,
                )
            yield chunk


def _refused(message: str, param: str | None) -> RequestRejected:
    body = error_body(message, 400, "invalid_form", param, "invalid_request_error")
    return RequestRejected(400, body, "invalid_form")


@dataclass(frozen=True, slots=True)
class Form:
    """An upload's body and where its ``model`` field's value lies in it; with the form's
    ``boundary``, the body is checked as it goes (:class:`OneModel`)."""

    body: BodySource
    model: Field
    boundary: bytes | None = None

    def with_model(self, model: str) -> BodySource:
        """The body to send when the route names ``model``: as it came, or with the field's
        value replaced (the length follows)."""
        body = self.body if self.boundary is None else OneModel(self.body, self.boundary)
        value = model.encode()
        if value == self.model.value:
            return body
        return Replaced(body, self.model.start, self.model.end, value)
