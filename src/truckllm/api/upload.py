"""A large request body (an audio upload) relayed while it arrives, never held whole.

:class:`Upload` reads the client's body from the ASGI ``receive`` only as it is needed: first
by the endpoint, until it has found what it routes by (the form's ``model``), then by the
upstream attempt that writes it on. Everything read is also written to a spool (a temporary
file past ``SPOOL_IN_MEMORY`` bytes, in ``TMPDIR``), so a retry or a failover on another key
reads the body again from its start: from the spool up to where the client is, then from the
client. Memory holds a window of the body at a time, whatever its size; the spool holds the
body once, on disk, until the request ends (:meth:`close`).

The body's length must be known before the first byte goes upstream (the upstream gets a
``Content-Length``): the client's ``Content-Length``, or else the whole body is read into the
spool first."""

from __future__ import annotations

import tempfile
from collections.abc import AsyncGenerator

from truckllm.api.asgi import ClientGone, Receive, Scope, check_length, too_large

SPOOL_IN_MEMORY = 1 << 20  # bytes kept in memory before the spool goes to a file
WINDOW = 256 * 1024  # bytes read back from the spool at a time


class Upload:
    """One request's body: read once from the client, replayable from its start."""

    def __init__(self, scope: Scope, receive: Receive, limit: int) -> None:
        check_length(scope, limit)
        declared = None
        for name, value in scope["headers"]:
            if name == b"content-length":
                declared = int(value)
        self._receive = receive
        self._limit = limit
        self._spool = tempfile.SpooledTemporaryFile(max_size=SPOOL_IN_MEMORY)  # noqa: SIM115
        self.received = 0  # bytes read from the client, all of them in the spool
        self.complete = False  # the client has sent its whole body
        self._declared = declared

    @property
    def length(self) -> int:
        """The body's length (after :meth:`read_all` when the client did not declare it)."""
        if self._declared is not None:
            return self._declared
        assert self.complete, "the length of a chunked upload is known once it is read"
        return self.received

    async def pull(self) -> bytes:
        """The client's next bytes (b"" once the body is complete), kept in the spool."""
        if self.complete:
            return b""
        message = await self._receive()
        if message["type"] == "http.disconnect":
            raise ClientGone
        data: bytes = message.get("body", b"")
        self.complete = not message.get("more_body", False)
        if data:
            if self.received + len(data) > self._limit:
                raise too_large(self._limit)
            self._spool.seek(0, 2)
            self._spool.write(data)
            self.received += len(data)
        return data

    async def read_all(self) -> None:
        """Read the rest of the body into the spool."""
        while not self.complete:
            await self.pull()

    async def chunks(self) -> AsyncGenerator[bytes]:
        """The body from its start: what the spool holds, then the client's next bytes."""
        at = 0
        while True:
            if at < self.received:
                self._spool.seek(at)
                data = self._spool.read(min(WINDOW, self.received - at))
            elif self.complete:
                return
            else:
                data = await self.pull()
            at += len(data)
            if data:
                yield data

    def close(self) -> None:
        self._spool.close()
