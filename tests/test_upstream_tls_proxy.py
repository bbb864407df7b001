"""Per-provider TLS (``providers[].tls``) and forward proxies (HTTPS_PROXY/HTTP_PROXY/NO_PROXY,
``providers[].proxy``) for upstream calls, over real sockets on loopback: a private CA refused by
default and trusted with ``ca_file``, a client certificate presented to an mTLS upstream, a CONNECT
proxy written here that records its targets, and the absolute form to a plain-http proxy."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import trustme
from helpers import Gateway
from test_http_client import Conn, RawServer, Runner, ok, run

from truckllm.admin.views import config_view
from truckllm.config import ConfigError, parse_config
from truckllm.config.schema import (
    KeyConfig,
    ProviderConfig,
    ProviderTLS,
    Timeouts,
    WebhookSinkConfig,
)
from truckllm.http.client import HTTPClient, ParsedURL
from truckllm.http.proxy import Proxy, ProxyEnv, ProxyError
from truckllm.http.tls import TLSSettings
from truckllm.providers import provider_registry
from truckllm.providers.base import ProviderContext, UpstreamUnavailable
from truckllm.providers.http import UpstreamHTTP, bearer
from truckllm.stores.base import StoreError
from truckllm.stores.http import HttpStore
from truckllm.telemetry.record import RequestRecord
from truckllm.telemetry.sinks.webhook import WebhookSink

__all__ = ["run"]  # the fixture, imported for its use by name

KEY = KeyConfig(id="k1")


class ConnectProxy:
    """A forward proxy on loopback: CONNECT tunnels relayed byte for byte (to 127.0.0.1 whatever
    the host named: its DNS, so upstreams can have names that are not loopback's), and any other request
    (the absolute form) answered by the proxy itself with a small JSON body. Records every request
    line it reads. ``refuse``: answer CONNECT with this status line instead."""

    def __init__(self, refuse: bytes = b"") -> None:
        self.lines: list[bytes] = []
        self.headers: list[dict[str, str]] = []
        self.refuse = refuse
        self.server: asyncio.Server | None = None
        self.handlers: set[asyncio.Task[Any]] = set()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self.handlers.add(task)
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            lines = head.split(b"\r\n")
            self.lines.append(lines[0])
            headers = {}
            for line in lines[1:]:
                if line:
                    name, _, value = line.decode("latin-1").partition(":")
                    headers[name.strip().lower()] = value.strip()
            self.headers.append(headers)
            method, target, _ = lines[0].split(b" ")
            if method != b"CONNECT":
                body = await reader.readexactly(int(headers.get("content-length", "0")))
                writer.write(ok(orjson.dumps({"via": "proxy", "got": body.decode()})))
                await writer.drain()
                return
            if self.refuse:
                writer.write(self.refuse + b"\r\nContent-Length: 0\r\n\r\n")
                await writer.drain()
                return
            port = target.decode().rpartition(":")[2]
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", int(port))
            writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
            await writer.drain()
            await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()
            self.handlers.discard(task)

    async def __aenter__(self) -> ConnectProxy:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return self

    async def __aexit__(self, *exc: object) -> None:
        """Stops listening and ends every tunnel still open (their sockets closed, not left to
        the garbage collector)."""
        assert self.server is not None
        self.server.close()
        for task in list(self.handlers):
            task.cancel()
        await asyncio.gather(*self.handlers, return_exceptions=True)
        await asyncio.sleep(0)  # the transports' connection_lost callbacks run

    @property
    def url(self) -> str:
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except ConnectionError:
        pass
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError, asyncio.CancelledError):
            await writer.wait_closed()


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A private CA, a server certificate (localhost, upstream.test), a client certificate, as
    PEM files."""
    ca = trustme.CA()
    root = tmp_path_factory.mktemp("pki")
    ca_file = root / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    client = ca.issue_cert("gateway@example.test")
    cert_file, key_file = root / "client.pem", root / "client.key"
    client.cert_chain_pems[0].write_to_path(str(cert_file))
    client.private_key_pem.write_to_path(str(key_file))
    return {
        "ca": ca,
        "ca_file": str(ca_file),
        "cert_file": str(cert_file),
        "key_file": str(key_file),
    }


def server_context(pki: dict[str, Any], require_client_cert: bool = False) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    pki["ca"].issue_cert("localhost", "upstream.test").configure_cert(ctx)
    if require_client_cert:
        ctx.verify_mode = ssl.CERT_REQUIRED
        pki["ca"].configure_trust(ctx)
    return ctx


def upstream(client: HTTPClient, **provider: Any) -> UpstreamHTTP:
    config = ProviderConfig(id="private", **provider)
    return UpstreamHTTP(ProviderContext(config, client, Timeouts(connect=5, read=5)), bearer)


async def echo_peer(conn: Conn) -> None:
    """Answer each request with the client certificate's names, if any, and the request line."""
    while True:
        line, _, _ = await conn.request()
        peer = conn.writer.get_extra_info("peercert") or {}
        names = dict(peer.get("subjectAltName", ()))
        await conn.reply(ok(orjson.dumps({"line": line.decode(), "peer": names})))


def url_of(srv: RawServer, host: str = "") -> str:
    """The server's URL; with ``host``, under that name (reached through the test's proxy)."""
    target: ParsedURL = srv.url()
    scheme, loopback, port = target.origin
    return f"{scheme}://{host or loopback}:{port}/v1/chat/completions"


def test_a_private_ca_is_refused_by_default_and_trusted_with_ca_file(
    run: Runner, pki: dict[str, Any]
) -> None:
    async def main() -> None:
        async with RawServer(echo_peer, tls=server_context(pki)) as srv:
            client = HTTPClient()
            with pytest.raises(UpstreamUnavailable) as refused:
                await upstream(client).post(url_of(srv), b"{}", KEY, False)
            assert isinstance(refused.value.__cause__, ssl.SSLCertVerificationError)
            trusting = upstream(client, tls=ProviderTLS(ca_file=pki["ca_file"]))
            resp = await trusting.post(url_of(srv), b"{}", KEY, False)
            assert resp.status == 200
            assert orjson.loads(await resp.read())["line"].startswith("POST /v1/chat")
            # verify: false takes any certificate (for tests and private networks only)
            lax = upstream(client, tls=ProviderTLS(verify=False))
            resp = await lax.post(url_of(srv), b"{}", KEY, False)
            assert resp.status == 200
            await resp.read()
            await client.close()

    run(main())


def test_a_client_certificate_is_presented_to_an_mtls_upstream(
    run: Runner, pki: dict[str, Any]
) -> None:
    async def main() -> None:
        async with RawServer(echo_peer, tls=server_context(pki, require_client_cert=True)) as srv:
            client = HTTPClient()
            without = upstream(client, tls=ProviderTLS(ca_file=pki["ca_file"]))
            with pytest.raises(UpstreamUnavailable):
                resp = await without.post(url_of(srv), b"{}", KEY, False)
                await without.read(resp)  # TLS 1.3: the refusal may come after the handshake
            tls = ProviderTLS(pki["ca_file"], pki["cert_file"], pki["key_file"])
            with_cert = upstream(client, tls=tls)
            resp = await with_cert.post(url_of(srv), b"{}", KEY, False)
            assert resp.status == 200
            answer = orjson.loads(await resp.read())
            assert answer["peer"] == {"email": "gateway@example.test"}
            # two providers with the same settings share one context, so one pool
            settings = TLSSettings(tls.ca_file, tls.cert_file, tls.key_file)
            assert client.tls_context(settings) is client.tls_context(settings)
            await client.close()

    run(main())


def test_https_proxy_tunnels_with_connect_and_tls_inside(run: Runner, pki: dict[str, Any]) -> None:
    async def main() -> None:
        async with (
            RawServer(echo_peer, tls=server_context(pki)) as srv,
            ConnectProxy() as proxy,
        ):
            env = ProxyEnv.from_environ({"HTTPS_PROXY": proxy.url, "NO_PROXY": "example.com"})
            client = HTTPClient(proxies=env)
            provider = upstream(client, tls=ProviderTLS(ca_file=pki["ca_file"]))
            for _ in range(2):  # the second request reuses the tunnel
                resp = await provider.post(url_of(srv, "upstream.test"), b"{}", KEY, False)
                assert resp.status == 200
                assert orjson.loads(await resp.read())["line"].startswith("POST /v1/chat")
            port = srv.url().origin[2]
            assert proxy.lines == [f"CONNECT upstream.test:{port} HTTP/1.1".encode()]
            assert srv.connections == 1
            await client.close()

    run(main())


def test_http_proxy_gets_the_absolute_form_and_credentials(run: Runner) -> None:
    async def main() -> None:
        async with ConnectProxy() as proxy:
            proxied = proxy.url.replace("http://", "http://us%40er:p%3Ass@")
            client = HTTPClient(proxies=ProxyEnv.from_environ({"http_proxy": proxied}))
            resp = await upstream(client).post(
                "http://upstream.invalid:8000/v1/chat/completions", b'{"a":1}', KEY, False
            )
            assert orjson.loads(await resp.read()) == {"via": "proxy", "got": '{"a":1}'}
            assert proxy.lines == [
                b"POST http://upstream.invalid:8000/v1/chat/completions HTTP/1.1"
            ]
            # base64("us@er:p:ss")
            assert proxy.headers[0]["proxy-authorization"] == "Basic dXNAZXI6cDpzcw=="
            assert proxy.headers[0]["host"] == "upstream.invalid:8000"
            await client.close()

    run(main())


def test_loopback_upstreams_are_never_proxied(run: Runner) -> None:
    async def answer(conn: Conn) -> None:
        await conn.request()
        await conn.reply(ok(b'{"direct":true}'))

    async def main() -> None:
        async with RawServer(answer) as srv, ConnectProxy() as proxy:
            client = HTTPClient(proxies=ProxyEnv.from_environ({"HTTP_PROXY": proxy.url}))
            resp = await upstream(client).post(url_of(srv), b"{}", KEY, False)
            assert await resp.read() == b'{"direct":true}'
            await client.close()
            assert proxy.lines == []
            assert srv.connections == 1

    run(main())


def test_no_proxy_and_the_provider_option_choose_the_route() -> None:
    env = ProxyEnv.from_environ({"HTTPS_PROXY": "http://corp:3128", "NO_PROXY": ".internal"})
    client = HTTPClient(proxies=env)
    cases = [
        ("https://api.example.com/v1/x", None, Proxy("corp", 3128)),
        ("https://llm.internal/v1/x", None, None),  # NO_PROXY
        ("https://api.example.com/v1/x", "none", None),  # the provider opts out
        ("https://api.example.com/v1/x", "http://own:8080", Proxy("own", 8080)),
        ("http://api.example.com/v1/x", None, None),  # no HTTP_PROXY
        ("https://localhost:8443/v1/x", None, None),  # loopback
    ]
    for url, option, expected in cases:
        assert upstream(client, proxy=option)._target(url)[1] == expected, (url, option)


def test_a_refused_connect_is_an_unavailable_upstream(run: Runner) -> None:
    async def main() -> None:
        async with ConnectProxy(refuse=b"HTTP/1.1 407 Proxy Authentication Required") as proxy:
            client = HTTPClient(proxies=ProxyEnv.from_environ({"HTTPS_PROXY": proxy.url}))
            with pytest.raises(UpstreamUnavailable) as refused:
                await upstream(client).post("https://upstream.invalid/v1/x", b"{}", KEY, False)
            assert isinstance(refused.value.__cause__, ProxyError)
            assert "407" in str(refused.value.__cause__)
            await client.close()

    run(main())


@pytest.mark.parametrize(
    ("host", "port", "no_proxy", "bypassed"),
    [
        ("api.example.com", 443, "example.com", True),
        ("api.example.com", 443, ".example.com", True),
        ("notexample.com", 443, "example.com", False),
        ("example.com", 443, "example.com:8443", False),
        ("example.com", 8443, "example.com:8443", True),
        ("10.1.2.3", 80, "10.0.0.0/8", True),
        ("11.1.2.3", 80, "10.0.0.0/8", False),
        ("2001:db8::1", 80, "2001:db8::1", True),
        ("2001:db8::1", 80, "[2001:db8::1]:80", True),
        ("2001:db8::1", 80, "[2001:db8::1]:81", False),
        ("127.0.0.1", 80, "", True),  # loopback: always direct
        ("localhost", 80, "", True),
        ("::1", 80, "", True),
        ("anything", 1, "*", True),
        ("anything", 1, "", False),
    ],
)
def test_no_proxy_matching(host: str, port: int, no_proxy: str, bypassed: bool) -> None:
    env = ProxyEnv.from_environ({"https_proxy": "proxy:3128", "NO_PROXY": no_proxy})
    assert env.https == Proxy("proxy", 3128)
    assert (env.select("https", host, port) is None) is bypassed


def test_lower_case_wins_and_https_proxies_are_refused() -> None:
    env = ProxyEnv.from_environ({"http_proxy": "http://a:1", "HTTP_PROXY": "http://b:2"})
    assert env.http == Proxy("a", 1) and env.https is None
    with pytest.raises(ValueError, match="http:// proxy"):
        ProxyEnv.from_environ({"HTTPS_PROXY": "https://secure-proxy:443"})


def provider_yaml(extra: str) -> str:
    return f"""
        providers:
          - id: private
            type: openai
            base_url: https://llm.internal
{extra}
    """


def config_problems(extra: str) -> list[str]:
    with pytest.raises(ConfigError) as err:
        parse_config(provider_yaml(extra), "<test>", {}, provider_registry().names())
    return err.value.problems


def test_tls_and_proxy_config_errors_name_the_key(tmp_path: Path, pki: dict[str, Any]) -> None:
    missing = tmp_path / "nope.pem"
    assert any(
        p.startswith("<test>: providers[0].tls.ca_file:") and "readable" in p
        for p in config_problems(f"            tls: {{ca_file: {missing}}}")
    )
    assert any(
        "providers[0].tls.key_file:" in p and "cert_file" in p
        for p in config_problems(f"            tls: {{key_file: {pki['key_file']}}}")
    )
    not_pem = tmp_path / "garbage.pem"
    not_pem.write_text("not a certificate")
    assert any(
        "providers[0].tls.ca_file:" in p and "PEM" in p
        for p in config_problems(f"            tls: {{ca_file: {not_pem}}}")
    )
    assert any(
        "providers[0].tls.cert_file:" in p
        for p in config_problems(f"            tls: {{cert_file: {not_pem}}}")
    )
    assert any(
        "providers[0].proxy:" in p for p in config_problems("            proxy: https://proxy:443")
    )
    good = f"""            tls: {{ca_file: {pki["ca_file"]}, cert_file: {pki["cert_file"]}, key_file: {pki["key_file"]}}}
            proxy: none"""
    cfg = parse_config(provider_yaml(good), "<test>", {}, provider_registry().names())
    assert cfg.providers[0].tls == ProviderTLS(pki["ca_file"], pki["cert_file"], pki["key_file"])
    assert cfg.providers[0].proxy == "none"


@pytest.fixture
def proxy_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[pytest.MonkeyPatch]:
    for name in ("http_proxy", "https_proxy", "all_proxy", "no_proxy"):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.upper(), raising=False)
    yield monkeypatch


def test_gateway_reaches_a_private_ca_upstream_through_https_proxy(
    gateway_factory: Any, loop_thread: Any, pki: dict[str, Any], proxy_env: pytest.MonkeyPatch
) -> None:
    """The whole path: the gateway reads HTTPS_PROXY at start, tunnels to the upstream and trusts
    its private CA through the provider's ``tls.ca_file``."""
    completion = orjson.dumps(
        {
            "id": "c1",
            "object": "chat.completion",
            "created": 1,
            "model": "m",
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": "hi"},
                    "finish_reason": "stop",
                }
            ],
            "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
        }
    )

    async def answer(conn: Conn) -> None:
        while True:
            await conn.request()
            await conn.reply(ok(completion))

    srv = RawServer(answer, tls=server_context(pki))
    proxy = ConnectProxy()
    loop_thread.run(srv.__aenter__())
    loop_thread.run(proxy.__aenter__())
    try:
        proxy_env.setenv("HTTPS_PROXY", proxy.url)
        port = srv.url().origin[2]
        gw: Gateway = gateway_factory(
            f"""
            providers:
              - id: private
                type: openai
                base_url: https://upstream.test:{port}/v1
                tls: {{ca_file: {pki["ca_file"]}}}
            model_aliases:
              m: private:m
            """
        )
        r = gw.post(
            "/v1/chat/completions", {"model": "m", "messages": [{"role": "user", "content": "x"}]}
        )
        assert r.status == 200, r.body
        assert orjson.loads(r.body)["choices"][0]["message"]["content"] == "hi"
        assert proxy.lines == [f"CONNECT upstream.test:{port} HTTP/1.1".encode()]
        gw.server.stop()  # its pooled tunnel closes: the upstream's handler ends
        loop_thread.run(asyncio.wait_for(srv.closed.wait(), 10))
    finally:
        loop_thread.run(proxy.__aexit__())
        loop_thread.run(srv.__aexit__())


# -- the gateway's own calls out: webhook sinks and the http store ------------------------------


def test_a_webhook_sink_posts_through_https_proxy(
    run: Runner, pki: dict[str, Any], proxy_env: pytest.MonkeyPatch
) -> None:
    """HTTPS_PROXY as for upstreams: a CONNECT tunnel, TLS to the receiver inside it (trusted
    here through SSL_CERT_FILE, as an operator's system store would)."""
    received: list[Any] = []

    async def receiver(conn: Conn) -> None:
        while True:
            body = (await conn.request())[2]
            received.append(orjson.loads(body))
            await conn.reply(ok(b"{}"))

    async def main() -> None:
        async with (
            RawServer(receiver, tls=server_context(pki)) as srv,
            ConnectProxy() as proxy,
        ):
            proxy_env.setenv("HTTPS_PROXY", proxy.url)
            proxy_env.setenv("SSL_CERT_FILE", str(pki["ca_file"]))
            port = srv.url().origin[2]
            cfg = WebhookSinkConfig(type="webhook", url=f"https://upstream.test:{port}/hook")
            sink = WebhookSink("webhook-0", cfg)
            await sink.start()
            sink.submit(RequestRecord(1.0, "r1", "chat"))
            await asyncio.wait_for(sink.close(5.0), 10)
            assert sink.delivered == 1
            assert [r["request_id"] for batch in received for r in batch] == ["r1"]
            assert proxy.lines == [f"CONNECT upstream.test:{port} HTTP/1.1".encode()]

    run(main())


def test_the_http_store_posts_through_its_proxy_option_and_no_proxy_is_honoured(
    run: Runner, proxy_env: pytest.MonkeyPatch
) -> None:
    async def main() -> None:
        async with ConnectProxy() as proxy:
            # storage.runtime.proxy: the store's own proxy, whatever the environment says.
            store = HttpStore("http://store.invalid:9000/", proxy=proxy.url)
            answer = await store._post("/kv/get", {"key": "k"})
            assert answer == {"via": "proxy", "got": '{"key":"k"}'}
            assert proxy.lines == [b"POST http://store.invalid:9000/kv/get HTTP/1.1"]
            await store.close()
            # The environment's HTTP_PROXY, and NO_PROXY naming the store: direct (and so
            # unreachable here, which is the point: the proxy saw nothing more).
            proxy_env.setenv("HTTP_PROXY", proxy.url)
            proxy_env.setenv("NO_PROXY", ".invalid")
            direct = HttpStore("http://store.invalid:9000/", timeout_s=2.0)
            with pytest.raises(StoreError):
                await direct._post("/kv/get", {"key": "k"})
            assert len(proxy.lines) == 1
            await direct.close()
            proxy_env.delenv("NO_PROXY")
            via_env = HttpStore("http://store.invalid:9000/")
            assert (await via_env._post("/kv/get", {"key": "j"}))["via"] == "proxy"
            assert len(proxy.lines) == 2
            await via_env.close()

    run(main())


def test_store_and_sink_proxy_options_are_checked() -> None:
    problems = config_problems(
        """
        storage: {runtime: {type: http, url: "http://s:1", proxy: "socks5://p:1"}}
        logging:
          sinks: [{type: webhook, url: "http://r:1/x", proxy: "ftp://p"}]
        """
    )
    assert any("storage.runtime.proxy: not an http:// proxy URL" in p for p in problems)
    assert any("logging.sinks[0].proxy: not an http:// proxy URL" in p for p in problems)


def test_proxy_credentials_stay_out_of_the_admin_config_view() -> None:
    cfg = parse_config(
        provider_yaml("""
            proxy: "http://me:hunter2@proxy.internal:3128"
        storage: {runtime: {type: http, url: "http://s:1", proxy: "http://u:s3cret@p:1"}}
        """),
        "<test>",
        {},
        provider_registry().names(),
    )
    shown = orjson.dumps(config_view(cfg)).decode()
    assert "hunter2" not in shown and "s3cret" not in shown
    assert "proxy.internal:3128" in shown  # where it goes is no secret
