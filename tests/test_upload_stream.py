"""Audio uploads relayed while they arrive (:mod:`truckllm.api.upload`): the form's ``model``
wherever it is (after the file, as the Node SDK sends it), a chunked body, and a retry after
the body began to go upstream, which sends it again whole from the spool, also when the first
upstream stopped reading it half way. Real HTTP on loopback; the memory bound is measured by
``bench/upload.py`` (no timing or memory assertions here)."""

from __future__ import annotations

import http.client
import os
import socket
import threading
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import urlsplit

import orjson
import pytest
from helpers import Gateway

from truckllm.testing.behaviour import KeyBehaviour
from truckllm.testing.mock import MockUpstream
from truckllm.testing.mock_media import parse_form

BOUNDARY = "r16-upload-boundary"
AUDIO = os.urandom(3 * 1024 * 1024 + 17)  # several spool windows, past the in-memory spool


def form(model: str, file_first: bool, audio: bytes = AUDIO) -> bytes:
    model_part = (
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="model"\r\n\r\n{model}\r\n'
    ).encode()
    file_part = (
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"; filename="a.wav"\r\n'
        "Content-Type: audio/wav\r\n\r\n"
    ).encode() + audio + b"\r\n"
    parts = file_part + model_part if file_first else model_part + file_part
    return parts + f"--{BOUNDARY}--\r\n".encode()


def post(gw: Gateway, body: bytes, chunked: bool = False) -> tuple[int, Any]:
    url = urlsplit(gw.url)
    conn = http.client.HTTPConnection(url.hostname or "", url.port, timeout=60)
    headers = {
        "Authorization": "Bearer client-key",
        "Content-Type": f"multipart/form-data; boundary={BOUNDARY}",
    }
    if chunked:
        pieces = (body[at : at + 100_000] for at in range(0, len(body), 100_000))
        conn.request("POST", "/v1/audio/transcriptions", pieces, headers, encode_chunked=True)
    else:
        conn.request("POST", "/v1/audio/transcriptions", body, headers)
    resp = conn.getresponse()
    answer = resp.read()
    conn.close()
    return resp.status, orjson.loads(answer)


class HalfReader:
    """An upstream that reads the head and a little of the body, answers 503 and closes: the
    gateway's first attempt stops writing the upload half way."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}/v1"
        self.hits = 0
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                conn.recv(65536)
                self.hits += 1
                body = b'{"error":{"message":"busy","type":"server_error","code":null}}'
                conn.sendall(
                    b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
                    b"Connection: close\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
                )

    def close(self) -> None:
        self.sock.close()


class Watcher:
    """An upstream that answers one upload and says (``began``) once it has 1 MiB of the body."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}/v1"
        self.began = threading.Event()
        self.body = b""
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        conn, _ = self.sock.accept()
        with conn:
            data = b""
            while b"\r\n\r\n" not in data:
                data += conn.recv(65536)
            head, _, body = data.partition(b"\r\n\r\n")
            length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
            chunks = [body]
            got = len(body)
            while got < length:
                chunk = conn.recv(65536)
                if not chunk:
                    return
                chunks.append(chunk)
                got += len(chunk)
                if got > 1 << 20:
                    self.began.set()
            self.body = b"".join(chunks)
            answer = b'{"text":"heard"}'
            conn.sendall(
                b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n"
                b"Connection: close\r\n\r\n%s" % (len(answer), answer)
            )


def test_the_upload_goes_upstream_while_the_client_still_sends_it(
    gateway_factory: Callable[..., Gateway],
) -> None:
    watcher = Watcher()
    gw = gateway_factory(
        f"""
providers: [{{id: w, base_url: "{watcher.url}", keys: [{{id: w1, secret: sk-w}}]}}]
model_aliases: {{ears: w:whisper-1}}
server: {{api_keys: [client-key], max_body_bytes: 16000000}}
"""
    )
    body = form("ears", False)
    half = len(body) // 2
    url = urlsplit(gw.url)
    conn = http.client.HTTPConnection(url.hostname or "", url.port, timeout=60)
    headers = {
        "Authorization": "Bearer client-key",
        "Content-Type": f"multipart/form-data; boundary={BOUNDARY}",
        "Content-Length": str(len(body)),
    }
    conn.putrequest("POST", "/v1/audio/transcriptions")
    for name, value in headers.items():
        conn.putheader(name, value)
    conn.endheaders()
    conn.send(body[:half])
    # The upstream has the first MiB before the client sends its second half: never buffered.
    assert watcher.began.wait(30)
    conn.send(body[half:])
    resp = conn.getresponse()
    assert resp.status == 200 and orjson.loads(resp.read()) == {"text": "heard"}
    conn.close()
    assert watcher.body == form("whisper-1", False)
    watcher.sock.close()


@pytest.fixture
def half() -> Iterator[HalfReader]:
    server = HalfReader()
    yield server
    server.close()


@pytest.fixture
def stack(
    serve_fake: Callable[..., Any], gateway_factory: Callable[..., Gateway], half: HalfReader
) -> tuple[Gateway, MockUpstream, MockUpstream]:
    oa = serve_fake(MockUpstream)
    backup = serve_fake(MockUpstream)
    oa.keys["sk-o-1"] = KeyBehaviour(faults={"500": 1.0})
    gw = gateway_factory(
        f"""
providers:
  - {{id: oa, base_url: "{oa.url}", keys: [{{id: o1, secret: sk-o-1}}, {{id: o2, secret: sk-o-2}}]}}
  - {{id: backup, base_url: "{backup.url}", keys: [{{id: b1, secret: sk-b-1}}]}}
  - {{id: half, base_url: "{half.url}", keys: [{{id: h1, secret: sk-h-1}}]}}
model_aliases:
  ears: [oa:gpt-4o-transcribe, backup:gpt-4o-transcribe]
  ears-half: [half:gpt-4o-transcribe, backup:whisper-1]
  whisper-1: backup:whisper-1
routing: {{strategy: round_robin}}
server: {{api_keys: [client-key], max_body_bytes: 16000000}}
retry: {{max_attempts: 3}}
"""
    )
    return gw, oa, backup


@pytest.mark.parametrize("file_first", [False, True])
def test_a_retry_sends_the_whole_upload_again(
    stack: tuple[Gateway, MockUpstream, MockUpstream], file_first: bool
) -> None:
    gw, oa, backup = stack
    for _ in range(2):  # whichever key round robin takes first, one attempt fails
        status, answer = post(gw, form("ears", file_first))
        assert status == 200, answer
        assert answer["text"] == f"mock transcript of {len(AUDIO)} bytes"
    failed = [r for r in oa.received if r.bearer == "sk-o-1"]
    assert failed and failed[-1].status == 500
    for sent in failed + [r for r in oa.received if r.bearer == "sk-o-2"]:
        parsed = parse_form(sent.headers["Content-Type"], sent.raw)
        assert parsed["model"] == "gpt-4o-transcribe" and parsed["file"] == ("a.wav", AUDIO)
    assert not backup.received  # the provider's other key served


def test_a_retry_after_an_upstream_stopped_reading_half_way(
    stack: tuple[Gateway, MockUpstream, MockUpstream], half: HalfReader
) -> None:
    gw, _, backup = stack
    status, answer = post(gw, form("ears-half", True))
    assert status == 200, answer
    assert half.hits == 1
    sent = backup.received[-1]
    assert int(sent.headers["Content-Length"]) == len(sent.raw)
    assert parse_form(sent.headers["Content-Type"], sent.raw) == {
        "model": "whisper-1",
        "file": ("a.wav", AUDIO),
    }


@pytest.mark.parametrize("file_first", [False, True])
def test_a_chunked_upload(
    stack: tuple[Gateway, MockUpstream, MockUpstream], file_first: bool
) -> None:
    gw, _, backup = stack
    status, answer = post(gw, form("whisper-1", file_first), chunked=True)
    assert status == 200, answer
    sent = backup.received[-1]
    assert sent.raw == form("whisper-1", file_first)  # as it came, with a Content-Length
    assert int(sent.headers["Content-Length"]) == len(sent.raw)


def test_an_upload_without_a_model_is_refused_after_reading_it(
    stack: tuple[Gateway, MockUpstream, MockUpstream],
) -> None:
    gw, oa, backup = stack
    body = form("ears", True).replace(b'name="model"', b'name="language"')
    status, answer = post(gw, body)
    assert status == 400 and answer["error"]["param"] == "model"
    assert not oa.received and not backup.received


def test_a_client_gone_half_way_sends_nothing_complete_upstream(
    stack: tuple[Gateway, MockUpstream, MockUpstream],
) -> None:
    gw, _, backup = stack
    body = form("whisper-1", False)
    url = urlsplit(gw.url)
    with socket.create_connection((url.hostname or "", url.port or 0)) as sock:
        sock.sendall(
            b"POST /v1/audio/transcriptions HTTP/1.1\r\nHost: x\r\n"
            b"Authorization: Bearer client-key\r\n"
            b"Content-Type: multipart/form-data; boundary=" + BOUNDARY.encode() + b"\r\n"
            b"Content-Length: %d\r\n\r\n" % len(body) + body[: len(body) // 2]
        )
    status, answer = post(gw, body)  # the gateway serves on
    assert status == 200, answer
    assert [parse_form(r.headers["Content-Type"], r.raw)["model"] for r in backup.received] == [
        "whisper-1"
    ]
