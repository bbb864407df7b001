"""The upstream HTTP client's edge cases, found in review: corrupt and cut-short compressed
bodies, resets, trailers, stray bytes, reads paused by a slow consumer, when a resend is unsafe,
and releasing from another task. Raw loopback servers writing exact bytes, on both loops."""

from __future__ import annotations

import asyncio
import gzip
import socket
import struct

import pytest
from test_http_client import HEAD, Conn, RawServer, Runner, ok, post, run

from truckllm.http.client import ConnectionBroken, HTTPClient, InvalidResponse

__all__ = ["run"]  # the fixture, shared with the main suite


def _reset(conn: Conn) -> None:
    """Close with a TCP RST (SO_LINGER 0), as a crashed process or a middlebox does."""
    sock = conn.writer.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    conn.writer.transport.abort()


def test_a_corrupt_gzip_body_is_an_error_not_an_empty_body(run: Runner) -> None:
    # The whole answer arrives in one read: on_body's zlib.error marks the response failed, then
    # on_message_complete marks it done, and read() only looks at "done".
    async def handler(conn: Conn) -> None:
        await conn.request()
        await conn.reply(ok(b"this is not gzip at all", b"Content-Encoding: gzip\r\n"))

    async def main() -> None:
        async with RawServer(handler) as srv:
            client = HTTPClient()
            resp = await post(client, srv.url())
            with pytest.raises(InvalidResponse):
                print(await resp.read())
            await client.close()

    run(main())


def test_a_truncated_gzip_body_is_an_error(run: Runner) -> None:
    # A close-delimited gzip body cut short: the gzip trailer (CRC, length) never came, and the
    # decoder's eof flag is the only thing that can tell.
    payload = b'{"choices":[{"message":{"content":"%s"}}]}' % (b"x" * 4000)
    packed = gzip.compress(payload)

    async def handler(conn: Conn) -> None:
        await conn.request()
        head = b"HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nConnection: close\r\n\r\n"
        await conn.reply(head + packed[: len(packed) // 2])

    async def main() -> None:
        async with RawServer(handler) as srv:
            client = HTTPClient()
            resp = await post(client, srv.url())
            with pytest.raises((InvalidResponse, ConnectionBroken)):
                body = await resp.read()
                print(len(body), "of", len(payload), "bytes returned as a complete body")
            await client.close()

    run(main())


def test_a_reset_cuts_a_close_delimited_body_with_an_error(run: Runner) -> None:
    # connection_lost(ConnectionResetError) is taken as the end of an EOF-delimited body.
    async def handler(conn: Conn) -> None:
        await conn.request()
        await conn.reply(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n\r\n")
        await conn.reply(b'data: {"choices":[{"delta":{"content":"Hel"}}]}\n\n')
        await asyncio.sleep(0.1)  # let the client read it before the reset
        _reset(conn)

    async def main() -> None:
        async with RawServer(handler) as srv:
            client = HTTPClient()
            resp = await post(client, srv.url())
            with pytest.raises(ConnectionBroken):
                print(await resp.read())
            await client.close()

    run(main())


def test_trailers_of_one_answer_do_not_leak_into_the_next(run: Runner) -> None:
    # Trailer fields reach on_header after on_headers_complete; raw_headers is only cleared there,
    # so they are merged into the headers of the next answer on the same pooled connection.
    async def handler(conn: Conn) -> None:
        await conn.request()
        await conn.reply(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: Server-Timing\r\n\r\n"
            b"2\r\n{}\r\n0\r\nServer-Timing: total;dur=12\r\n\r\n"
        )
        await conn.request()
        await conn.reply(ok(b'"second"'))

    async def main() -> None:
        async with RawServer(handler) as srv:
            client = HTTPClient()
            first = await post(client, srv.url())
            assert await first.read() == b"{}"
            second = await post(client, srv.url())
            assert await second.read() == b'"second"'
            assert srv.connections == 1
            assert "server-timing" not in second.headers, second.headers
            await client.close()

    run(main())


def test_bytes_after_the_end_of_an_answer_are_not_read_into_it(run: Runner) -> None:
    # A desynchronised upstream (a body longer than its framing, a duplicated answer) sends more
    # than one message. data_received drops the connection for bytes that arrive while it is idle,
    # but bytes in the same read as the end of the answer, or before release(), are parsed as a
    # new message into the same Response (status, headers, body) and the connection is pooled.
    stray = b'HTTP/1.1 500 Oops\r\nX-Stray: 1\r\nContent-Length: 7\r\n\r\n"stray"'

    answered: list[bytes] = []

    async def handler(conn: Conn) -> None:
        while True:
            await conn.request()
            first = not answered
            answered.append(b"")
            await conn.reply(ok(b'"one"') + stray if first else ok(b'"two"'))

    async def main() -> None:
        async with RawServer(handler) as srv:
            client = HTTPClient()
            resp = await post(client, srv.url())
            body = await resp.read()
            assert (resp.status, body) == (200, b'"one"'), (resp.status, resp.headers, body)
            resp = await post(client, srv.url())
            assert await resp.read() == b'"two"'
            assert srv.connections == 2  # the desynchronised connection was not reused
            await client.close()

    run(main())


def test_read_timeout_does_not_count_time_the_client_itself_paused_reading(run: Runner) -> None:
    # Back-pressure pauses the socket when the consumer is behind; data_received then stops and
    # last_read goes stale, so the read timer blames the upstream for the consumer's own delay.
    chunk = b"data: " + b"x" * 65530 + b"\n\n"  # 64 KiB events, 48 of them: 3 MiB

    async def handler(conn: Conn) -> None:
        await conn.request()
        await conn.reply(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        for _ in range(48):
            await conn.reply(b"%x\r\n%s\r\n" % (len(chunk), chunk))
        await conn.reply(b"0\r\n\r\n")

    async def main() -> None:
        async with RawServer(handler) as srv:
            client = HTTPClient()
            resp = await post(client, srv.url(), read_timeout=0.4)
            got = len(await anext(resp))
            await asyncio.sleep(0.8)  # a slow downstream client: the upstream never stalled
            async for part in resp:
                got += len(part)
            assert got == 48 * len(chunk)
            resp.release()
            await client.close()

    run(main())


def test_a_request_the_upstream_held_before_dropping_it_is_not_sent_again(run: Runner) -> None:
    # The "stale connection" resend fires whenever a reused connection breaks before the first
    # byte of the answer, however long the upstream held the request: an upstream that read the
    # prompt, worked on it and then died (OOM-killed worker, LB cutting a silent connection) gets
    # the same POST again, immediately, outside the gateway's retry budget and backoff.
    accepted: list[Conn] = []

    async def handler(conn: Conn) -> None:
        accepted.append(conn)
        await conn.request()
        await conn.reply(ok(b'"first"'))
        if len(accepted) == 1:
            await conn.request()
            await asyncio.sleep(0.5)  # generating...
            return  # ...and gone, without a byte

    async def main() -> None:
        async with RawServer(handler) as srv:
            client = HTTPClient()
            assert await (await post(client, srv.url())).read() == b'"first"'
            with pytest.raises(ConnectionBroken):
                resp = await client.post(
                    srv.url(), HEAD, b'{"n":2}', connect_timeout=5.0, read_timeout=5.0
                )
                resp.release()
            assert srv.connections == 1, "the held POST was sent a second time"
            await client.close()

    run(main())


def test_release_wakes_a_reader_waiting_on_the_same_response(run: Runner) -> None:
    # release() from another task (a watchdog abandoning a stream) while a reader waits in
    # _wait: finish() drops the response and cancels the timer, connection_lost then finds no
    # response, and the reader's future is never resolved: it waits forever.
    async def handler(conn: Conn) -> None:
        await conn.request()
        await conn.reply(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        await conn.reader.read()

    async def main() -> None:
        async with RawServer(handler) as srv:
            client = HTTPClient()
            resp = await post(client, srv.url(), read_timeout=0.5)
            reader = asyncio.ensure_future(anext(resp))
            await asyncio.sleep(0.1)
            resp.release()
            done, _ = await asyncio.wait([reader], timeout=2)
            assert done, "the reader still waits after release() and the read timeout"
            with pytest.raises(ConnectionBroken):
                reader.result()
            await client.close()

    run(main())


def test_guard_no_body_answers_with_a_content_encoding_are_fine(run: Runner) -> None:
    # Passes today; keeps a fix for the truncated-gzip case from flagging answers that carry a
    # Content-Encoding but no body at all.
    async def handler(conn: Conn) -> None:
        for status in (b"204 No Content", b"200 OK"):
            await conn.request()
            extra = b"" if status.startswith(b"204") else b"Content-Length: 0\r\n"
            await conn.reply(b"HTTP/1.1 %s\r\nContent-Encoding: gzip\r\n%s\r\n" % (status, extra))

    async def main() -> None:
        async with RawServer(handler) as srv:
            client = HTTPClient()
            for status in (204, 200):
                resp = await post(client, srv.url())
                assert resp.status == status
                assert await resp.read() == b""
            assert srv.connections == 1
            await client.close()

    run(main())


def test_a_compressed_stream_is_inflated_only_as_fast_as_it_is_read(run: Runner) -> None:
    # 64 MiB of zeros are about 64 KiB gzipped: one read of the socket. Read chunk by chunk (as
    # a relay does), no chunk may be more than the high-water mark and one inflate step: the
    # rest waits compressed. Read to the end, every byte is there and the body ends properly.
    inflated = 64 * 1024 * 1024
    packed = gzip.compress(bytes(inflated), 9)

    async def handler(conn: Conn) -> None:
        await conn.request()
        await conn.reply(ok(packed, b"Content-Encoding: gzip\r\n"))
        await conn.request()  # kept alive: the connection went back to the pool
        await conn.reply(ok(b"{}"))

    async def main() -> None:
        async with RawServer(handler) as srv:
            client = HTTPClient()
            resp = await post(client, srv.url())
            total = 0
            biggest = 0
            async for chunk in resp:
                assert chunk.count(0) == len(chunk)
                total += len(chunk)
                biggest = max(biggest, len(chunk))
            resp.release()
            assert total == inflated
            assert biggest <= (1 << 20) + 256 * 1024
            again = await post(client, srv.url())
            assert await again.read() == b"{}" and srv.connections == 1
            await client.close()

    run(main())
