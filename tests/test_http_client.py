"""The upstream HTTP client against raw loopback servers that write exact bytes: keep-alive
reuse, a stale pooled connection, the three ways a body ends, compression, 1xx answers,
timeouts, back-pressure, abandoned streams, TLS and garbage."""

from __future__ import annotations

import asyncio
import gzip
import ssl
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
import trustme
import uvloop

from truckllm.http.client import (
    ConnectionBroken,
    HTTPClient,
    InvalidResponse,
    ParsedURL,
    Response,
    ResponseTooLarge,
    encode_headers,
)

Handler = Callable[["Conn"], Awaitable[None]]
HEAD = encode_headers({"Content-Type": "application/json", "Authorization": "Bearer sk-x"})


class Conn:
    """The server side of one accepted connection, with helpers to read one request."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    async def request(self) -> tuple[bytes, dict[str, str], bytes]:
        head = await self.reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        headers = {}
        for line in lines[1:]:
            if line:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
        body = await self.reader.readexactly(int(headers.get("content-length", "0")))
        return lines[0].encode(), headers, body

    async def reply(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()


class RawServer:
    def __init__(self, handler: Handler, tls: ssl.SSLContext | None = None) -> None:
        self.handler = handler
        self.tls = tls
        self.connections = 0
        self.requests: list[tuple[bytes, dict[str, str], bytes]] = []
        self.closed = asyncio.Event()
        self.server: asyncio.Server | None = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            await self.handler(Conn(reader, writer))
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()
            self.closed.set()

    async def __aenter__(self) -> RawServer:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0, ssl=self.tls)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()

    def url(self, path: str = "/v1/chat/completions") -> ParsedURL:
        assert self.server is not None
        port = self.server.sockets[0].getsockname()[1]
        scheme = "https" if self.tls else "http"
        host = "localhost" if self.tls else "127.0.0.1"
        return ParsedURL.parse(f"{scheme}://{host}:{port}{path}")


Runner = Callable[[Awaitable[Any]], Any]


@pytest.fixture(params=["asyncio", "uvloop"])
def run(request: pytest.FixtureRequest) -> Runner:
    """Each test on both loops: uvloop in production, asyncio's where uvloop is missing."""

    def runner(coro: Awaitable[Any]) -> Any:
        async def main() -> Any:
            return await asyncio.wait_for(coro, 20)

        if request.param == "uvloop":
            return uvloop.run(main())
        return asyncio.run(main())

    return runner


def ok(body: bytes, extra: bytes = b"") -> bytes:
    return (
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
        + extra
        + b"Content-Length: "
        + str(len(body)).encode()
        + b"\r\n\r\n"
        + body
    )


async def post(client: HTTPClient, target: ParsedURL, body: bytes = b"{}", **kw: Any) -> Response:
    kw.setdefault("connect_timeout", 5.0)
    kw.setdefault("read_timeout", 5.0)
    return await client.post(target, HEAD, body, **kw)


def test_keep_alive_reuses_one_connection_and_sends_exact_bytes(run: Runner) -> None:
    async def handler(conn: Conn) -> None:
        for i in range(3):
            line, headers, body = await conn.request()
            assert line == b"POST /v1/chat/completions?x=1 HTTP/1.1"
            assert headers["authorization"] == "Bearer sk-x"
            assert headers["host"].startswith("127.0.0.1:")
            await conn.reply(
                ok(b'{"n":%d,"echo":%s}' % (i, body), b"X-Ratelimit-Remaining-Requests: 7\r\n")
            )

    async def main() -> None:
        async with RawServer(handler) as srv:
            client = HTTPClient()
            target = srv.url("/v1/chat/completions?x=1")
            for i in range(3):
                resp = await post(client, target, b'{"i":%d}' % i)
                assert resp.status == 200
                assert resp.headers["x-ratelimit-remaining-requests"] == "7"
                assert await resp.read() == b'{"n":%d,"echo":{"i":%d}}' % (i, i)
            assert srv.connections == 1
            await client.close()

    run(main())


def test_a_pooled_connection_closed_while_idle_is_replaced_without_an_error(run: Runner) -> None:
    async def handler(conn: Conn) -> None:
        await conn.request()
        # Answer, then close without saying so (as servers do at their idle timeout).
        await conn.reply(ok(b"{}"))

    async def main() -> None:
        async with RawServer(handler) as srv:
            client = HTTPClient()
            target = srv.url()
            assert await (await post(client, target)).read() == b"{}"
            await srv.closed.wait()
            await asyncio.sleep(0.05)
            resp = await post(client, target)
            assert await resp.read() == b"{}"
            assert srv.connections == 2
            await client.close()

    run(main())


def test_a_pooled_connection_that_breaks_before_answering_is_sent_again_once(run: Runner) -> None:
    accepted = 0

    async def handler(conn: Conn) -> None:
        nonlocal accepted
        accepted += 1
        first = accepted == 1
        await conn.request()
        await conn.reply(ok(b'"first"'))
        if first:
            await conn.request()  # the close races the next request: read it, answer nothing

    async def main() -> None:
        async with RawServer(handler) as srv:
            client = HTTPClient()
            target = srv.url()
            assert await (await post(client, target)).read() == b'"first"'
            resp = await post(client, target)
            assert await resp.read() == b'"first"'
            assert srv.connections == 2
            await client.close()

    run(main())


def test_a_stale_connection_is_retried_but_a_fresh_one_that_breaks_is_an_error(run: Runner) -> None:
    async def handler(conn: Conn) -> None:
        await conn.request()  # read it, then hang up without a word

    async def main() -> None:
        async with RawServer(handler) as srv:
            client = HTTPClient()
            with pytest.raises(ConnectionBroken):
                await post(client, srv.url())
            assert srv.connections == 1
            await client.close()

    run(main())


def test_chunked_and_close_delimited_bodies_arrive_whole(run: Runner) -> None:
    async def handler(conn: Conn) -> None:
        line, _, _ = await conn.request()
        if b"chunked" in line:
            await conn.reply(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
            for part in (b"data: a\n\n", b"data: b\n\n"):
                await conn.reply(b"%x\r\n%s\r\n" % (len(part), part))
                await asyncio.sleep(0.02)
            await conn.reply(b"0\r\n\r\n")
        else:
            await conn.reply(b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\nuntil the end")

    async def main() -> None:
        async with RawServer(handler) as srv:
            client = HTTPClient()
            resp = await post(client, srv.url("/chunked"))
            parts = [chunk async for chunk in resp]
            assert parts == [b"data: a\n\n", b"data: b\n\n"]
            assert resp.complete
            resp.release()
            resp = await post(client, srv.url("/eof"))
            assert await resp.read() == b"until the end"
            await client.close()

    run(main())


def test_gzip_is_decoded_and_informational_answers_are_skipped(run: Runner) -> None:
    payload = b'{"usage":{"prompt_tokens":3}}' * 50

    async def handler(conn: Conn) -> None:
        await conn.request()
        packed = gzip.compress(payload)
        await conn.reply(b"HTTP/1.1 100 Continue\r\n\r\n")
        await conn.reply(ok(packed, b"Content-Encoding: gzip\r\n"))

    async def main() -> None:
        async with RawServer(handler) as srv:
            client = HTTPClient()
            resp = await post(client, srv.url())
            assert resp.status == 200
            assert await resp.read() == payload
            await client.close()

    run(main())


def test_header_names_are_lower_cased_and_a_repeated_one_joined_in_order(run: Runner) -> None:
    async def handler(conn: Conn) -> None:
        await conn.request()
        await conn.reply(ok(b"{}", b"X-Seen: 1\r\nWarning: a\r\nX-SEEN: 2\r\n"))

    async def main() -> dict[str, str]:
        async with RawServer(handler) as srv:
            client = HTTPClient()
            resp = await post(client, srv.url())
            await resp.read()
            await client.close()
            return resp.headers

    headers = run(main())
    assert headers["x-seen"] == "1, 2" and headers["warning"] == "a"
    assert headers["content-type"] == "application/json"


def test_a_host_name_is_looked_up_once_for_many_connections(run: Runner) -> None:
    """Eight connections opened at once to ``localhost``, then four more one by one: one lookup
    of the name (the loop's getaddrinfo, counted), and every connection served. ``localhost``
    may resolve to ::1 first, where nothing listens: the next address is tried."""

    async def handler(conn: Conn) -> None:
        await conn.request()
        await conn.reply(ok(b"{}", b"Connection: close\r\n"))  # a new connection each time

    async def main() -> tuple[int, int, int]:
        loop = asyncio.get_running_loop()
        lookups = 0
        real = loop.getaddrinfo

        async def counted(*args: Any, **kw: Any) -> Any:
            nonlocal lookups
            lookups += 1
            return await real(*args, **kw)

        loop.getaddrinfo = counted  # type: ignore[method-assign]
        async with RawServer(handler) as srv:
            url = srv.url()
            target = ParsedURL.parse(f"http://localhost:{url.origin[2]}/v1/chat/completions")
            client = HTTPClient()

            async def one() -> int:
                resp = await post(client, target)
                await resp.read()
                return resp.status

            statuses = await asyncio.gather(*(one() for _ in range(8)))
            statuses += [await one() for _ in range(4)]
            await client.close()
            return lookups, srv.connections, statuses.count(200)

    lookups, connections, served = run(main())
    assert (lookups, connections, served) == (1, 12, 12)


def test_read_timeout_fires_on_silence_not_on_a_slow_steady_stream(run: Runner) -> None:
    async def handler(conn: Conn) -> None:
        line, _, _ = await conn.request()
        if b"steady" in line:
            await conn.reply(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
            for _ in range(6):  # 0.6 s in all, never 0.3 s of silence
                await asyncio.sleep(0.1)
                await conn.reply(b"2\r\nok\r\n")
            await conn.reply(b"0\r\n\r\n")
        else:
            await asyncio.sleep(5)

    async def main() -> None:
        async with RawServer(handler) as srv:
            client = HTTPClient()
            resp = await post(client, srv.url("/steady"), read_timeout=0.3)
            assert await resp.read() == b"ok" * 6
            loop = asyncio.get_running_loop()
            started = loop.time()
            with pytest.raises(TimeoutError):
                await post(client, srv.url("/stall"), read_timeout=0.3)
            assert 0.25 < loop.time() - started < 2
            await client.close()

    run(main())


def test_total_timeout_bounds_a_trickling_body(run: Runner) -> None:
    async def handler(conn: Conn) -> None:
        await conn.request()
        await conn.reply(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n")
        for _ in range(100):
            await asyncio.sleep(0.05)
            await conn.reply(b"x")

    async def main() -> None:
        async with RawServer(handler) as srv:
            client = HTTPClient()
            resp = await post(client, srv.url(), read_timeout=1.0, total=0.4)
            with pytest.raises(TimeoutError):
                await resp.read()
            await client.close()

    run(main())


def test_a_large_body_arrives_intact_through_back_pressure(run: Runner) -> None:
    payload = bytes(range(256)) * (16 * 1024)  # 4 MiB, more than the client buffers

    async def handler(conn: Conn) -> None:
        await conn.request()
        await conn.reply(ok(payload))

    async def main() -> None:
        async with RawServer(handler) as srv:
            client = HTTPClient()
            resp = await post(client, srv.url())
            await asyncio.sleep(0.3)  # let the server push; the client must pause, not hoard
            assert resp._size <= 2 * 1024 * 1024
            got = bytearray()
            async for chunk in resp:
                got += chunk
            assert bytes(got) == payload
            resp.release()
            await client.close()

    run(main())


def test_an_abandoned_stream_closes_its_connection(run: Runner) -> None:
    async def handler(conn: Conn) -> None:
        await conn.request()
        await conn.reply(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nmore\r\n")
        await conn.reader.read()  # until the client hangs up

    async def main() -> None:
        async with RawServer(handler) as srv:
            client = HTTPClient()
            resp = await post(client, srv.url())
            assert await anext(resp) == b"more"
            resp.release()
            await asyncio.wait_for(srv.closed.wait(), 2)
            resp = await post(client, srv.url())  # not the abandoned connection
            assert srv.connections == 2
            resp.release()
            await client.close()

    run(main())


def test_cancelling_a_request_closes_its_connection(run: Runner) -> None:
    async def handler(conn: Conn) -> None:
        await conn.request()
        await conn.reader.read()

    async def main() -> None:
        async with RawServer(handler) as srv:
            client = HTTPClient()
            task = asyncio.ensure_future(post(client, srv.url()))
            await asyncio.sleep(0.1)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            await asyncio.wait_for(srv.closed.wait(), 2)
            await client.close()

    run(main())


def test_garbage_and_a_body_cut_short_are_errors(run: Runner) -> None:
    async def handler(conn: Conn) -> None:
        line, _, _ = await conn.request()
        if b"garbage" in line:
            await conn.reply(b"SMTP ready\r\n\r\n")
        else:
            await conn.reply(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc")

    async def main() -> None:
        async with RawServer(handler) as srv:
            client = HTTPClient()
            with pytest.raises(InvalidResponse):
                await post(client, srv.url("/garbage"))
            resp = await post(client, srv.url("/short"))
            with pytest.raises(ConnectionBroken):
                await resp.read()
            await client.close()

    run(main())


def test_tls_with_a_trusted_certificate_and_refusal_of_an_untrusted_one(run: Runner) -> None:
    ca = trustme.CA()
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("localhost").configure_cert(server_ctx)
    trusted = ssl.create_default_context()
    ca.configure_trust(trusted)

    async def handler(conn: Conn) -> None:
        _, headers, _ = await conn.request()
        await conn.reply(ok(b'{"host":"%s"}' % headers["host"].encode()))

    async def main() -> None:
        async with RawServer(handler, tls=server_ctx) as srv:
            client = HTTPClient(ssl_context=trusted)
            resp = await post(client, srv.url())
            assert (await resp.read()).startswith(b'{"host":"localhost:')
            await client.close()
            default = HTTPClient()  # the system's CAs do not know this one
            with pytest.raises(ssl.SSLCertVerificationError):
                await post(default, srv.url())
            await default.close()

    run(main())


def test_connecting_to_a_closed_port_is_an_os_error(run: Runner) -> None:
    async def main() -> None:
        probe = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
        port = probe.sockets[0].getsockname()[1]
        probe.close()
        await probe.wait_closed()
        client = HTTPClient()
        with pytest.raises(OSError):
            await post(client, ParsedURL.parse(f"http://127.0.0.1:{port}/x"))
        await client.close()

    run(main())


def test_header_injection_is_refused_when_headers_are_encoded() -> None:
    with pytest.raises(ValueError, match="line break"):
        encode_headers({"Authorization": "Bearer sk\r\nX-Evil: 1"})
    assert ParsedURL.parse("https://api.openai.com/v1/chat/completions").host_header == (
        b"api.openai.com"
    )
    assert ParsedURL.parse("http://[::1]:8080/v1").host_header == b"[::1]:8080"
    with pytest.raises(ValueError):
        ParsedURL.parse("ftp://example.com/")


def _stepped(parts: list[bytes], steps: list[asyncio.Event]) -> Handler:
    """A chunked answer: the head with ``parts[0]``, then each next part once its step is set,
    then the end once the last step is."""

    async def handler(conn: Conn) -> None:
        await conn.request()
        head = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
        await conn.reply(head + b"%x\r\n%b\r\n" % (len(parts[0]), parts[0]))
        for part, step in zip([*parts[1:], b""], steps, strict=True):
            await step.wait()
            await conn.reply(b"%x\r\n%b\r\n" % (len(part), part))
        await conn.reader.read()

    return handler


def test_a_spliced_body_goes_to_the_sink_from_the_read_callback(run: Runner) -> None:
    """Each read after the splice reaches the sink outside any task; the splice ends with the
    body, and the reader then sees the end."""

    async def main() -> None:
        steps = [asyncio.Event(), asyncio.Event()]
        async with RawServer(_stepped([b"one", b"two"], steps)) as srv:
            client = HTTPClient()
            resp = await post(client, srv.url())
            assert await anext(resp) == b"one"
            got: list[tuple[bytes, bool]] = []

            def sink(data: bytes) -> bool:
                got.append((data, asyncio.current_task() is None))
                steps[len(got)].set()  # the end comes after the part: it must be taken first
                return True

            done = resp.splice(sink)
            assert not done.done()
            steps[0].set()
            await done
            assert got == [(b"two", True)]  # no task ran the sink: the read callback did
            assert [chunk async for chunk in resp] == []
            assert resp.complete
            resp.release()
            await client.close()

    run(main())


def test_a_sink_that_says_stop_leaves_the_rest_to_the_reader(run: Runner) -> None:
    async def main() -> None:
        steps = [asyncio.Event(), asyncio.Event(), asyncio.Event()]
        async with RawServer(_stepped([b"a", b"b", b"c"], steps)) as srv:
            client = HTTPClient()
            resp = await post(client, srv.url())
            assert await anext(resp) == b"a"
            got: list[bytes] = []
            done = resp.splice(lambda data: got.append(data) or False)
            steps[0].set()
            await done
            assert got == [b"b"]
            steps[1].set()
            steps[2].set()
            assert b"".join([chunk async for chunk in resp]) == b"c"
            assert got == [b"b"]  # nothing after the stop reached the sink
            resp.release()
            await client.close()

    run(main())


def test_a_sink_that_raises_fails_the_reader_with_its_error(run: Runner) -> None:
    async def main() -> None:
        steps = [asyncio.Event(), asyncio.Event()]
        async with RawServer(_stepped([b"a", b"b"], steps)) as srv:
            client = HTTPClient()
            resp = await post(client, srv.url())
            assert await anext(resp) == b"a"

            def sink(data: bytes) -> bool:
                raise ValueError(f"refused {data!r}")

            done = resp.splice(sink)
            steps[0].set()
            await done
            with pytest.raises(ValueError, match="refused b'b'"):
                await anext(resp)
            resp.release()
            await client.close()

    run(main())


def test_a_splice_never_skips_a_part_already_waiting(run: Runner) -> None:
    async def main() -> None:
        steps = [asyncio.Event()]
        async with RawServer(_stepped([b"waiting"], steps)) as srv:
            client = HTTPClient()
            resp = await post(client, srv.url())  # the part came with the head, in one read
            got: list[bytes] = []
            done = resp.splice(lambda data: got.append(data) or True)
            assert done.done() and got == []
            assert await anext(resp) == b"waiting"
            steps[0].set()
            assert [chunk async for chunk in resp] == []
            resp.release()
            await client.close()

    run(main())


def test_a_body_under_a_size_cap_is_never_spliced(run: Runner) -> None:
    """Only the reader counts a capped body against its cap: a splice would pass it by."""

    async def main() -> None:
        steps = [asyncio.Event(), asyncio.Event()]
        async with RawServer(_stepped([b"a", b"bb"], steps)) as srv:
            client = HTTPClient()
            resp = await post(client, srv.url(), max_body=2)
            assert await anext(resp) == b"a"
            got: list[bytes] = []
            done = resp.splice(lambda data: got.append(data) or True)
            assert done.done()
            steps[0].set()
            with pytest.raises(ResponseTooLarge):
                await anext(resp)
            assert got == []
            resp.release()
            await client.close()

    run(main())
