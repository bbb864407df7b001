"""A form field named with RFC 5987's ``name*=`` (which RFC 7578 forbids in forms) is refused:
the gateway's scan reads ``name=`` only, while an upstream's parser may take ``name*=UTF-8''model``
as the model field, one the gateway never routed, checked (allowed_models) or priced."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from helpers import Gateway
from test_upload_stream import BOUNDARY
from test_upload_stream import form as upload_form
from test_upload_stream import post as upload

from truckllm.providers.openai.multipart import FormScanner
from truckllm.testing.mock import MockUpstream
from truckllm.testing.mock_media import parse_form

SMUGGLED = [
    "name*=UTF-8''model",
    "name*=utf-8'en'model",
    'NAME* = "UTF-8\'\'model"',
    "name*0=mod; name*1=el",
]


@pytest.mark.parametrize("where", ["after", "before"])
@pytest.mark.parametrize("spelling", SMUGGLED)
def test_an_extended_name_field_is_refused_not_sent_on(
    serve_fake: Callable[..., Any], gateway_factory: Callable[..., Gateway], spelling: str, where: str
) -> None:
    up = serve_fake(MockUpstream)
    gw = gateway_factory(f"""
        providers:
          - {{id: oa, base_url: "{up.url}", keys: [{{id: o1, secret: sk-o-1}}]}}
        model_aliases: {{cheap: "oa:whisper-1"}}
        server: {{api_keys: [{{key: client-key, id: c, allowed_models: [cheap]}}]}}
        """)
    body = upload_form("cheap", False, b"abc")
    extra = (
        f"--{BOUNDARY}\r\nContent-Disposition: form-data; {spelling}\r\n\r\ngpt-4o-transcribe\r\n"
    ).encode()
    if where == "after":
        closing = f"--{BOUNDARY}--".encode()
        body = body.replace(closing, extra + closing)
    else:
        body = extra + body
    status, answer = upload(gw, body)
    assert status == 400 and answer["error"]["code"] == "invalid_form", answer
    assert not [r for r in up.received if r.status == 200]  # no whole form reached it
    status, answer = upload(gw, upload_form("cheap", True, b"abc"))  # a plain form still goes
    assert status == 200, answer
    assert parse_form(up.received[-1].headers["Content-Type"], up.received[-1].raw)["model"] == (
        "whisper-1"
    )


def test_filenames_and_plain_names_are_not_extended_names() -> None:
    for head, extended in [
        ('name="file"; filename*=UTF-8\'\'a.wav', False),
        ('name="file"; filename="my name*1.wav"', False),
        ('name="model"', False),
        ("name*=UTF-8''model", True),
    ]:
        scanner = FormScanner(b"b", ("model",))
        scanner.feed(f"--b\r\nContent-Disposition: form-data; {head}\r\n\r\nx\r\n--b--".encode())
        assert scanner.extended_name is extended, head
