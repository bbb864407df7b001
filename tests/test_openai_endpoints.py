"""OpenAI's other model endpoints through the gateway with the official ``openai`` SDK: legacy
completions (JSON and SSE), moderations, image generations, speech (audio relayed as it comes)
and the multipart uploads (transcriptions, translations). Passthrough to OpenAI-type providers,
failover before the first byte, a clear refusal from other provider types (so an alias moves
on), records and metrics under the endpoint's label, cost from reported token usage."""

from __future__ import annotations

import asyncio
import io
import threading
import warnings
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import openai
import pytest
from helpers import Gateway
from openai.types import Completion, ImagesResponse, ModerationCreateResponse
from openai.types.audio import Transcription, Translation

from truckllm.accounting.money import cost_nanos, rates_of
from truckllm.config.schema import Pricing
from truckllm.providers.openai.multipart import Field, Form, FormScanner, boundary_of
from truckllm.telemetry.record import RequestRecord
from truckllm.testing.behaviour import KeyBehaviour
from truckllm.testing.fake_anthropic import FakeAnthropic
from truckllm.testing.mock import MockUpstream
from truckllm.testing.mock_media import parse_form
from truckllm.testing.wire import Scripted

PRICING = (
    "{{input_token_cost: 0.001, output_token_cost: 0.002,"
    " image_cost: 0.04, audio_second_cost: 0.0001, character_cost: 15}}"
)
CONFIG = f"""
providers:
  - id: oa
    base_url: {{oa}}
    keys: [{{{{id: o1, secret: sk-o-1, pricing: {PRICING}}}}}]
  - id: backup
    base_url: {{backup}}
    keys: [{{{{id: b1, secret: sk-b-1, pricing: {PRICING}}}}}]
  - id: claude
    type: anthropic
    base_url: {{anthropic}}
    keys: [{{{{id: a1, secret: sk-ant-1}}}}]
model_aliases:
  instruct: [claude:claude-sonnet-4-5, oa:gpt-3.5-turbo-instruct]
  sturdy: [oa:gpt-3.5-turbo-instruct, backup:gpt-3.5-turbo-instruct]
  only-claude: claude:claude-sonnet-4-5
  voice: oa:gpt-4o-mini-tts
  ears: oa:gpt-4o-transcribe
  painter: oa:gpt-image-1
  gpt-3.5-turbo-instruct: oa:gpt-3.5-turbo-instruct
  omni-moderation-latest: oa:omni-moderation-latest
  whisper-1: oa:whisper-1
server:
  api_keys: [client-key]
retry: {{{{max_attempts: 2}}}}
"""


class Stack:
    def __init__(self, gw: Gateway, oa: MockUpstream, backup: MockUpstream) -> None:
        self.gw, self.oa, self.backup = gw, oa, backup
        self.records: list[RequestRecord] = []
        gw.app.records.subscribe(self.records.append)

    def last(self) -> RequestRecord:
        self.gw.settled()
        return self.records[-1]


@pytest.fixture
def stack(serve_fake: Callable[..., Any], gateway_factory: Callable[..., Gateway]) -> Stack:
    oa = serve_fake(MockUpstream)
    backup = serve_fake(MockUpstream)
    claude = serve_fake(FakeAnthropic)
    gw = gateway_factory(CONFIG.format(oa=oa.url, backup=backup.url, anthropic=claude.url))
    return Stack(gw, oa, backup)


@pytest.fixture
def client(stack: Stack) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=stack.gw.url + "/v1", api_key="client-key", max_retries=0) as c:
        yield c


def test_completions_json(stack: Stack, client: openai.OpenAI) -> None:
    c = client.completions.create(model="gpt-3.5-turbo-instruct", prompt="Say hi", max_tokens=5)
    assert isinstance(c, Completion) and c.object == "text_completion"
    assert c.choices[0].text.strip() and c.choices[0].finish_reason == "stop"
    assert c.usage is not None and c.usage.completion_tokens > 0
    sent = stack.oa.received[-1]
    assert sent.path == "/v1/completions" and sent.body["model"] == "gpt-3.5-turbo-instruct"
    rec = stack.last()
    assert rec.endpoint == "completions" and rec.status == 200 and rec.provider == "oa"
    assert rec.usage is not None and rec.usage.completion_tokens == c.usage.completion_tokens
    assert rec.cost_usd and rec.cost_usd > 0
    assert b'endpoint="completions"' in stack.gw.request("GET", "/metrics").body


def test_completions_stream_usage_stripped_unless_asked(
    stack: Stack, client: openai.OpenAI
) -> None:
    chunks = list(client.completions.create(model="sturdy", prompt="Say hi", stream=True))
    text = "".join(ch.choices[0].text for ch in chunks if ch.choices)
    assert text.strip() and all(ch.usage is None for ch in chunks)
    assert all(ch.choices for ch in chunks)  # the usage chunk the gateway asked for is gone
    sent = stack.oa.received[-1].body
    assert sent["model"] == "gpt-3.5-turbo-instruct"
    assert sent["stream_options"] == {"include_usage": True}
    rec = stack.last()
    assert rec.endpoint == "completions" and rec.stream and rec.usage is not None
    assert not rec.usage.estimated and rec.usage.completion_tokens > 0

    asked = list(
        client.completions.create(
            model="sturdy", prompt="Say hi", stream=True, stream_options={"include_usage": True}
        )
    )
    assert asked[-1].choices == [] and asked[-1].usage is not None
    assert asked[-1].usage.completion_tokens == stack.last().usage.completion_tokens  # type: ignore[union-attr]


def test_completions_fail_over_before_the_first_byte(stack: Stack, client: openai.OpenAI) -> None:
    stack.oa.script.append(Scripted(status=500, body={"error": {"message": "boom"}}))
    chunks = list(client.completions.create(model="sturdy", prompt="Hi", stream=True))
    assert "".join(ch.choices[0].text for ch in chunks if ch.choices).strip()
    rec = stack.last()
    assert rec.provider == "backup" and rec.attempts == 2 and rec.status == 200


def test_other_provider_types_refuse_so_the_alias_moves_on(
    stack: Stack, client: openai.OpenAI
) -> None:
    c = client.completions.create(model="instruct", prompt="Hi")
    assert c.choices[0].text.strip()
    assert stack.last().provider == "oa"
    with pytest.raises(openai.BadRequestError) as err:
        client.completions.create(model="only-claude", prompt="Hi")
    assert "does not serve OpenAI's completions endpoint" in str(err.value)
    assert err.value.code == "unsupported_endpoint"


def test_moderations(stack: Stack, client: openai.OpenAI) -> None:
    m = client.moderations.create(model="omni-moderation-latest", input=["kill it", "hello"])
    assert isinstance(m, ModerationCreateResponse)
    assert [r.flagged for r in m.results] == [True, False]
    assert stack.oa.received[-1].path == "/v1/moderations"
    rec = stack.last()
    assert rec.endpoint == "moderations" and rec.status == 200 and not rec.cost_usd
    default = client.moderations.create(input="hello")  # OpenAI's default model, by name
    assert default.model == "omni-moderation-latest"


def test_images(stack: Stack, client: openai.OpenAI) -> None:
    img = client.images.generate(model="painter", prompt="a truck", n=2)
    assert isinstance(img, ImagesResponse) and img.data and len(img.data) == 2
    assert img.data[0].b64_json and img.usage is not None
    assert stack.oa.received[-1].body["model"] == "gpt-image-1"
    rec = stack.last()
    assert rec.endpoint == "images" and rec.usage is not None and rec.usage.images == 2
    tokens = rec.usage.prompt_tokens * 0.001 / 1000 + rec.usage.completion_tokens * 0.002 / 1000
    assert rec.cost_usd == pytest.approx(2 * 0.04 + tokens)
    plain = client.images.generate(model="oa:dall-e-3", prompt="a truck")
    assert plain.data and plain.usage is None
    rec = stack.last()
    assert rec.usage is not None and rec.usage.images == 1 and rec.usage.prompt_tokens == 0
    assert rec.cost_usd == pytest.approx(0.04)


def test_speech_is_relayed_as_it_arrives(stack: Stack, client: openai.OpenAI) -> None:
    gate = threading.Event()
    stack.oa.media.speech_gate = gate
    with client.audio.speech.with_streaming_response.create(
        model="voice", voice="alloy", input="Hello there"
    ) as resp:
        assert resp.headers["content-type"] == "audio/mpeg"
        chunks = resp.iter_bytes(1024)
        first = next(chunks)  # before the upstream sent the rest: nothing is held back
        assert first.startswith(b"\xff\xfb")
        gate.set()
        rest = b"".join(chunks)
    assert len(first) + len(rest) == stack.oa.media.speech_bytes
    assert stack.oa.received[-1].body["model"] == "gpt-4o-mini-tts"
    rec = stack.last()
    assert rec.endpoint == "audio.speech" and rec.status == 200 and rec.provider == "oa"
    assert rec.usage is not None and rec.usage.characters == len("Hello there")
    assert rec.usage.prompt_tokens == rec.usage.completion_tokens == 0  # audio is not tokens
    assert rec.cost_usd == pytest.approx(len("Hello there") * 15 / 1e6)


def test_speech_cut_mid_audio_is_not_a_complete_file(stack: Stack, client: openai.OpenAI) -> None:
    stack.oa.keys["sk-o-1"] = KeyBehaviour(faults={"cut": 1.0})
    with pytest.raises(Exception) as cut:
        client.audio.speech.create(model="voice", voice="alloy", input="Hello").read()
    assert isinstance(cut.value, openai.APIConnectionError | OSError), type(cut.value)
    assert stack.last().endpoint == "audio.speech"


def _form(content: bytes = b"RIFF....WAVEfmt ") -> tuple[str, io.BytesIO]:
    return ("clip.wav", io.BytesIO(content))


@pytest.mark.parametrize("kind", ["transcriptions", "translations"])
def test_uploads_routed_by_the_form_model(stack: Stack, client: openai.OpenAI, kind: str) -> None:
    audio = bytes(range(256)) * 8192  # 2 MiB, every byte value: several write windows
    api = client.audio.transcriptions if kind == "transcriptions" else client.audio.translations
    with warnings.catch_warnings():  # the SDK marks translations deprecated
        warnings.simplefilter("ignore", DeprecationWarning)
        out = api.create(model="ears", file=("clip.wav", io.BytesIO(audio)))
    assert isinstance(out, Transcription | Translation)
    assert out.text == f"mock transcript of {len(audio)} bytes"
    form = stack.oa.media.forms[-1]
    assert form["model"] == "gpt-4o-transcribe"  # the alias's model, rewritten in the form
    assert form["file"] == ("clip.wav", audio)
    rec = stack.last()
    assert rec.endpoint == f"audio.{kind}" and rec.status == 200
    assert rec.usage is not None and rec.usage.prompt_tokens == 14 and rec.cost_usd


def test_upload_without_alias_goes_as_it_came(stack: Stack, client: openai.OpenAI) -> None:
    text = client.audio.transcriptions.create(
        model="whisper-1", file=_form(), response_format="text"
    )
    assert text.strip() == "mock transcript of 16 bytes"
    sent = stack.oa.received[-1]
    form = parse_form(sent.headers["Content-Type"], sent.raw)
    assert form["model"] == "whisper-1" and form["response_format"] == "text"
    assert stack.last().usage is None  # a text answer carries no usage
    client.audio.transcriptions.create(model="whisper-1", file=_form())
    rec = stack.last()  # whisper reports seconds, not tokens
    assert rec.usage is not None and rec.usage.seconds == 3 and rec.usage.prompt_tokens == 0
    assert rec.cost_usd == pytest.approx(3 * 0.0001)


def test_upload_needs_a_model_and_a_form(stack: Stack) -> None:
    boundary = "b0undary"
    raw = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="a.wav"\r\n'
        f"Content-Type: audio/wav\r\n\r\nxxxx\r\n--{boundary}--\r\n"
    ).encode()
    headers = {
        "Authorization": "Bearer client-key",
        "Content-Type": f"multipart/form-data; boundary={boundary}",
    }
    r = stack.gw.request("POST", "/v1/audio/transcriptions", raw=raw, headers=headers)
    assert r.status == 400 and b"model" in r.body
    headers["Content-Type"] = "application/json"
    r = stack.gw.request("POST", "/v1/audio/transcriptions", raw=b"{}", headers=headers)
    assert r.status == 400 and b"multipart/form-data" in r.body


def test_upload_over_the_body_limit(
    serve_fake: Callable[..., Any], gateway_factory: Callable[..., Gateway]
) -> None:
    oa = serve_fake(MockUpstream)
    gw = gateway_factory(
        f"providers: [{{id: oa, base_url: {oa.url}, keys: [{{id: k, secret: s}}]}}]\n"
        "server: {max_body_bytes: 65536}\n"
    )
    c = openai.OpenAI(base_url=gw.url + "/v1", api_key="x", max_retries=0)
    with c, pytest.raises(openai.APIStatusError) as err:
        c.audio.transcriptions.create(model="whisper-1", file=_form(b"x" * 100_000))
    assert err.value.status_code == 413
    assert not oa.received


def test_units_that_are_not_tokens_are_priced_exactly() -> None:
    pricing = Pricing(image_cost=0.04, audio_second_cost=0.0001, character_cost=15)
    rates = rates_of(pricing)
    # 2 images, 1.5 s of audio, 1000 characters: 0.08 + 0.00015 + 0.015 USD
    assert cost_nanos(rates, 0, 0, units=(2, 1.5, 1000)) == 95_150_000
    assert cost_nanos(rates, 10, 10) == 0  # no token prices set


class _Chunked:
    """A body source over bytes, in chunks of ``size``."""

    def __init__(self, data: bytes, size: int) -> None:
        self.data, self.size, self.length = data, size, len(data)

    async def chunks(self) -> AsyncIterator[bytes]:
        for at in range(0, len(self.data), self.size):
            yield self.data[at : at + self.size]


def _scan(body: bytes, boundary: bytes, size: int) -> dict[str, Field]:
    scanner = FormScanner(boundary, ("model", "stream"))
    for at in range(0, len(body), size):
        scanner.feed(body[at : at + size])
    return scanner.fields


def _replaced(form: Form, model: str, size: int) -> bytes:
    async def collect() -> bytes:
        source = Form(_Chunked(body_of(form), size), form.model).with_model(model)
        data = b"".join([bytes(c) async for c in source.chunks()])
        assert len(data) == source.length
        return data

    return asyncio.run(collect())


def body_of(form: Form) -> bytes:
    assert isinstance(form.body, _Chunked)
    return form.body.data


def test_the_model_field_is_found_wherever_it_is_in_the_form_however_it_is_split() -> None:
    b = b"XyZ"

    def part(name: str, value: bytes, filename: str | None = None) -> bytes:
        fn = f'; filename="{filename}"' if filename else ""
        return (
            (b"--" + b + f'\r\nContent-Disposition: form-data; name="{name}"{fn}\r\n\r\n'.encode())
            + value
            + b"\r\n"
        )

    tail = b"--" + b + b"--\r\n"
    after_file = (
        part("file", b"--XyZ-not-a-boundary model\r\n-XyZ" * 50, "model")
        + part("models", b"wrong")
        + part("model", b"whisper-1")
        + tail
    )
    for size in (1, 2, 3, 7, 64, 1000, len(after_file)):  # any split finds the same field
        field = _scan(after_file, b, size)["model"]
        assert after_file[field.start : field.end] == field.value == b"whisper-1"
        rewritten = _replaced(Form(_Chunked(after_file, size), field), "gpt-4o-transcribe", size)
        parsed = parse_form("multipart/form-data; boundary=XyZ", rewritten)
        assert parsed["model"] == "gpt-4o-transcribe" and parsed["models"] == "wrong"
        assert parsed["file"] == ("model", b"--XyZ-not-a-boundary model\r\n-XyZ" * 50)
    source = _Chunked(after_file, 5)
    assert Form(source, field).with_model("whisper-1") is source  # as it came
    preamble = b"ignored preamble\r\n" + part("model", b"m") + part("stream", b"true") + tail
    for size in (1, 5, len(preamble)):
        fields = _scan(preamble, b, size)
        assert (fields["model"].value, fields["stream"].value) == (b"m", b"true")
        assert preamble[fields["model"].start : fields["model"].end] == b"m"
    assert _scan(part("file", b"x", "a.wav") + tail, b, 3) == {}
    assert _scan(part("model", b"x" * 10_000) + tail, b, 100) == {}  # too long for a model name
    assert boundary_of('multipart/form-data; boundary="XyZ"') == b"XyZ"
    assert boundary_of("application/json") is None
