"""OpenAI's Responses API inbound: the official ``openai`` SDK against the gateway, over an
OpenAI-type upstream that serves the Responses API (passthrough, byte for byte) and over targets
that do not (an OpenAI-compatible chat upstream, Anthropic, Gemini: translation through the
internal form). Answers are parsed by the SDK's own types."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import openai
import orjson
import pytest
from helpers import Gateway, request, sse_events
from openai.types.responses import Response
from pydantic import BaseModel
from redis_server import RedisServer, redis_server  # noqa: F401 - a fixture

from truckllm.api import App
from truckllm.config import parse_config
from truckllm.telemetry.record import RequestRecord
from truckllm.testing.fake_anthropic import FakeAnthropic
from truckllm.testing.fake_gemini import FakeGemini
from truckllm.testing.mock import MockUpstream
from truckllm.testing.serve import ServerThread
from truckllm.testing.wire import Scripted

CONFIG = """
providers:
  - id: native
    base_url: {native}
    responses_api: true
    keys: [{{id: n1, secret: sk-n-1, pricing: {{input_token_cost: 0.001, output_token_cost: 0.002}}}}]
  - id: chat
    base_url: {chat}
    keys: [{{id: c1, secret: sk-c-1, pricing: {{input_token_cost: 0.001, output_token_cost: 0.002}}}}]
  - id: claude
    type: anthropic
    base_url: {anthropic}
    keys: [{{id: a1, secret: sk-ant-1, pricing: {{input_token_cost: 0.003, output_token_cost: 0.015}}}}]
  - id: gemini
    type: gemini
    base_url: {gemini}
    keys: [{{id: g1, secret: g-key-1, pricing: {{input_token_cost: 0.001, output_token_cost: 0.002}}}}]
model_aliases:
  resp-direct: native:gpt-4.1-mini
  resp-on-chat: chat:gpt-4o-mini
  resp-on-claude: claude:claude-sonnet-4-5
  resp-on-gemini: gemini:gemini-2.5-flash
server:
  api_keys: [client-key, other-key]
retry: {{max_attempts: 1}}
"""
MODELS = ["resp-direct", "resp-on-chat", "resp-on-claude", "resp-on-gemini"]
WEATHER = {
    "type": "function",
    "name": "get_weather",
    "description": "Weather for a city",
    "parameters": {
        "type": "object",
        "properties": {"city": {"type": "string"}},
        "required": ["city"],
    },
}


class Answer(BaseModel):
    answer: str


class Stack:
    def __init__(self, gw: Gateway, native: MockUpstream, chat: MockUpstream) -> None:
        self.gw, self.native, self.chat = gw, native, chat
        self.records: list[RequestRecord] = []
        gw.app.records.subscribe(self.records.append)

    def last(self) -> RequestRecord:
        self.gw.settled()
        return self.records[-1]

    def sdk(self, key: str = "client-key") -> openai.OpenAI:
        return openai.OpenAI(base_url=self.gw.url + "/v1", api_key=key, max_retries=0)


@pytest.fixture
def stack(serve_fake: Callable[..., Any], gateway_factory: Callable[..., Gateway]) -> Stack:
    native = serve_fake(MockUpstream)
    chat = serve_fake(MockUpstream)
    claude = serve_fake(FakeAnthropic)
    gemini = serve_fake(FakeGemini)
    gw = gateway_factory(
        CONFIG.format(native=native.url, chat=chat.url, anthropic=claude.url, gemini=gemini.url)
    )
    return Stack(gw, native, chat)


@pytest.fixture
def client(stack: Stack) -> Iterator[openai.OpenAI]:
    with stack.sdk() as c:
        yield c


@pytest.mark.parametrize("model", MODELS)
def test_create_over_every_provider_type(stack: Stack, client: openai.OpenAI, model: str) -> None:
    r = client.responses.create(model=model, input="Hi", instructions="Be brief.")
    assert isinstance(r, Response) and r.status == "completed" and r.object == "response"
    assert r.output_text and r.output[-1].type == "message"
    assert r.usage is not None and r.usage.input_tokens > 0 and r.usage.output_tokens > 0
    assert r.model in (model, "gpt-4.1-mini")
    rec = stack.last()
    assert rec.endpoint == "responses" and rec.status == 200 and rec.usage is not None
    assert rec.cost_usd and rec.cost_usd > 0
    metrics = stack.gw.request("GET", "/metrics").body
    assert b'endpoint="responses"' in metrics


@pytest.mark.parametrize("model", MODELS)
def test_stream_over_every_provider_type(stack: Stack, client: openai.OpenAI, model: str) -> None:
    with client.responses.stream(model=model, input="Hi") as stream:
        events = list(stream)
        final = stream.get_final_response()
    kinds = [e.type for e in events]
    for kind in (
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
        "response.output_text.delta",
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
    ):
        assert kind in kinds, (kind, kinds)
    assert kinds[-1] == "response.completed"
    assert [e.sequence_number for e in events] == list(range(len(events)))
    text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert text and final.output_text == text and final.status == "completed"
    rec = stack.last()
    assert rec.endpoint == "responses" and rec.stream and rec.usage is not None
    assert not rec.usage.estimated and rec.usage.completion_tokens > 0


@pytest.mark.parametrize("model", MODELS)
def test_parse_structured_output(stack: Stack, client: openai.OpenAI, model: str) -> None:
    if model == "resp-on-chat":  # the chat mock answers words; an upstream that obeys, scripted
        body = {
            "id": "chatcmpl-1",
            "object": "chat.completion",
            "created": 1,
            "model": "gpt-4o-mini",
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": '{"answer": "forty-two"}'},
                    "finish_reason": "stop",
                }
            ],
            "usage": {"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8},
        }
        stack.chat.script.append(Scripted(body=body))
    parsed = client.responses.parse(model=model, input="The answer?", text_format=Answer)
    assert isinstance(parsed.output_parsed, Answer) and parsed.output_parsed.answer
    if model == "resp-on-chat":
        fmt = stack.chat.received[-1].body["response_format"]
        assert fmt["type"] == "json_schema" and fmt["json_schema"]["name"] == "Answer"
        assert fmt["json_schema"]["schema"]["required"] == ["answer"]


@pytest.mark.parametrize("model", MODELS)
def test_tools_round_trip_with_previous_response_id(
    stack: Stack, client: openai.OpenAI, model: str
) -> None:
    first = client.responses.create(
        model=model, input="Weather in Paris?", tools=[WEATHER], tool_choice="required"
    )
    call = next(o for o in first.output if o.type == "function_call")
    assert call.name == "get_weather" and call.call_id and isinstance(call.arguments, str)
    second = client.responses.create(
        model=model,
        previous_response_id=first.id,
        input=[{"type": "function_call_output", "call_id": call.call_id, "output": "Sunny"}],
        tools=[WEATHER],
    )
    assert second.output_text and second.previous_response_id == first.id
    if model == "resp-on-chat":  # the whole conversation reached the chat upstream
        sent = stack.chat.received[-1].body["messages"]
        assert [m["role"] for m in sent] == ["user", "assistant", "tool"]
        assert sent[1]["tool_calls"][0]["id"] == call.call_id
    got = client.responses.retrieve(second.id)
    assert got.id == second.id and got.output_text == second.output_text
    items = client.responses.input_items.list(second.id)
    assert [i.type for i in items.data] == ["function_call_output"]
    client.responses.delete(second.id)
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(second.id)
    with stack.sdk("other-key") as other, pytest.raises(openai.NotFoundError):
        other.responses.retrieve(first.id)  # another client's response is not there for it


def test_input_items_order_and_pages(client: openai.OpenAI) -> None:
    r = client.responses.create(
        model="resp-on-chat",
        input=[
            {"role": "user", "content": "one"},
            {"role": "assistant", "content": "two"},
            {"role": "user", "content": "three"},
        ],
    )
    desc = client.responses.input_items.list(r.id)
    texts = [i.content[0].text for i in desc.data]  # type: ignore[union-attr]
    assert texts == ["three", "two", "one"] and all(i.id for i in desc.data)
    page = client.responses.input_items.list(r.id, order="asc", limit=2)
    assert [i.content[0].text for i in page.data] == ["one", "two"] and page.has_more  # type: ignore[union-attr]


def test_input_tokens(client: openai.OpenAI) -> None:
    count = client.responses.input_tokens.count(model="resp-on-chat", input="Hello there " * 20)
    assert count.input_tokens > 10


CODEX_LIKE: dict[str, Any] = {
    "model": "resp-on-chat",
    "stream": True,
    "input": [
        {
            "type": "message",
            "id": "msg_1",
            "role": "developer",
            "content": [{"type": "input_text", "text": "You are a coding agent."}],
        },
        {
            "type": "message",
            "id": "msg_2",
            "role": "user",
            "content": [{"type": "input_text", "text": "List the files"}],
        },
        {"type": "reasoning", "id": "rs_1", "summary": [], "encrypted_content": "gAAA"},
        {
            "type": "function_call",
            "id": "fc_1",
            "status": "completed",
            "name": "exec_command",
            "arguments": '{"cmd": "ls"}',
            "call_id": "call_1",
        },
        {"type": "function_call_output", "id": "fco_1", "call_id": "call_1", "output": "a.txt"},
    ],
    "tools": [
        {
            "type": "namespace",
            "name": "multi_agent_v1",
            "description": "Agents",
            "tools": [
                {
                    "type": "function",
                    "name": "spawn_agent",
                    "parameters": {"type": "object", "properties": {}},
                }
            ],
        },
        {
            "type": "function",
            "name": "exec_command",
            "strict": False,
            "parameters": {"type": "object", "properties": {"cmd": {"type": "string"}}},
        },
        {"type": "web_search", "external_web_access": False},
    ],
    "tool_choice": "auto",
    "parallel_tool_calls": True,
    "reasoning": {"summary": "auto"},
    "store": False,
    "include": ["reasoning.encrypted_content"],
    "prompt_cache_key": "sess-1",
    "client_metadata": {"x-codex-installation-id": "i-1"},
}


def test_a_codex_request_is_translated(stack: Stack) -> None:
    headers = {
        "Authorization": "Bearer client-key",
        "Accept": "text/event-stream",
        "session-id": "sess-1",
    }
    resp = request("POST", stack.gw.url + "/v1/responses", CODEX_LIKE, headers)
    assert resp.status == 200, resp.body
    rec = stack.last()
    assert rec.session_id == "sess-1" and rec.usage is not None and not rec.usage.estimated
    assert resp.headers["x-truckllm-dropped-tools"] == "web_search"
    sent = stack.chat.received[-1].body
    assert [m["role"] for m in sent["messages"]] == ["system", "user", "assistant", "tool"]
    assert [t["function"]["name"] for t in sent["tools"]] == [
        "multi_agent_v1__spawn_agent",
        "exec_command",
    ]
    for name in ("store", "include", "prompt_cache_key", "client_metadata", "input"):
        assert name not in sent
    events = [orjson.loads(e) for e in sse_events(resp.body)]
    kinds = [e["type"] for e in events]
    assert kinds[0] == "response.created" and kinds[-1] == "response.completed"
    assert b"event: response.output_item.done\n" in resp.body
    response_id = events[-1]["response"]["id"]
    gone = request("GET", stack.gw.url + f"/v1/responses/{response_id}", None, headers)
    assert gone.status == 404  # store: false keeps nothing


def test_namespace_calls_are_mapped_back(stack: Stack) -> None:
    body = {**CODEX_LIKE, "stream": False, "input": "Spawn an agent"}
    resp = request("POST", stack.gw.url + "/v1/responses", body, {"Authorization": "Bearer client-key"})
    assert resp.status == 200, resp.body
    call = resp.json()["output"][-1]
    assert call["type"] == "function_call"
    assert (call["namespace"], call["name"]) == ("multi_agent_v1", "spawn_agent")


def test_passthrough_is_byte_faithful_both_ways(stack: Stack) -> None:
    answer = (
        b'{"id":"resp_up1","object":"response","created_at":1,"status":"completed","model":'
        b'"gpt-4.1-mini","output":[{"id":"msg_1","type":"message","status":"completed","role":'
        b'"assistant","content":[{"type":"output_text","annotations":[],"text":"Hi!"}]}],'
        b'"parallel_tool_calls":true,"tool_choice":"auto","tools":[],"usage":{"input_tokens":7,'
        b'"input_tokens_details":{"cached_tokens":2},"output_tokens":3,'
        b'"output_tokens_details":{"reasoning_tokens":1},"total_tokens":10}}'
    )
    stack.native.script.append(Scripted(body=answer))
    body = {"model": "resp-direct", "input": "Hi", "tools": [{"type": "web_search"}], "store": True}
    resp = request("POST", stack.gw.url + "/v1/responses", body, {"Authorization": "Bearer client-key"})
    assert resp.status == 200 and resp.body == answer
    assert "x-truckllm-dropped-tools" not in resp.headers  # the upstream runs its tools
    sent = stack.native.received[-1]
    assert sent.path == "/v1/responses" and orjson.loads(sent.raw) == {**body, "model": "gpt-4.1-mini"}
    rec = stack.last()
    assert rec.usage is not None
    assert (rec.usage.prompt_tokens, rec.usage.cached_tokens, rec.usage.completion_tokens) == (7, 2, 3)


def test_passthrough_stream_is_byte_faithful(stack: Stack) -> None:
    events = [
        b'event: response.created\ndata: {"type":"response.created","sequence_number":0,'
        b'"response":{"id":"resp_up2","object":"response","status":"in_progress","output":[]}}\n\n',
        b'event: response.output_text.delta\ndata: {"type":"response.output_text.delta",'
        b'"sequence_number":1,"item_id":"msg_1","output_index":0,"content_index":0,"delta":"Hi"}\n\n',
        b'event: response.completed\ndata: {"type":"response.completed","sequence_number":2,'
        b'"response":{"id":"resp_up2","object":"response","status":"completed","output":[],'
        b'"usage":{"input_tokens":9,"output_tokens":4,"total_tokens":13}}}\n\n',
    ]
    stack.native.script.append(Scripted(events=list(events)))
    body = {"model": "resp-direct", "input": "Hi", "stream": True}
    resp = request("POST", stack.gw.url + "/v1/responses", body, {"Authorization": "Bearer client-key"})
    assert resp.status == 200 and resp.body == b"".join(events)
    rec = stack.last()
    assert rec.usage is not None and (rec.usage.prompt_tokens, rec.usage.completion_tokens) == (9, 4)


def test_errors_are_the_sdks_own_exceptions(stack: Stack, client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        client.responses.create(model="resp-on-chat", input="Hi", previous_response_id="resp_nope")
    assert info.value.code == "previous_response_not_found"
    with pytest.raises(openai.NotFoundError):
        client.responses.create(model="no-such-model", input="Hi")
    with pytest.raises(openai.BadRequestError):
        client.responses.create(
            model="resp-on-chat",
            input=[{"type": "item_reference", "id": "msg_x"}],  # type: ignore[list-item]
        )
    with stack.sdk("wrong") as bad, pytest.raises(openai.AuthenticationError):
        bad.responses.create(model="resp-on-chat", input="Hi")


def test_a_broken_translated_stream_ends_with_response_failed(stack: Stack) -> None:
    chunk = {
        "id": "c1",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": "m",
        "choices": [{"index": 0, "delta": {"content": "Hel"}, "finish_reason": None}],
    }
    stack.chat.script.append(Scripted(events=[chunk, chunk, chunk], cut_after=2))
    body = {"model": "resp-on-chat", "input": "Hi", "stream": True}
    resp = request("POST", stack.gw.url + "/v1/responses", body, {"Authorization": "Bearer client-key"})
    kinds = [orjson.loads(e)["type"] for e in sse_events(resp.body)]
    assert kinds[0] == "response.created" and kinds[-1] == "response.failed"
    assert "response.completed" not in kinds


@pytest.fixture
def two_gateways(
    serve_fake: Callable[..., Any],
    redis_server: RedisServer,  # noqa: F811
) -> Iterator[tuple[list[Gateway], MockUpstream, MockUpstream]]:
    native = serve_fake(MockUpstream)
    chat = serve_fake(MockUpstream)
    config = f"""
providers:
  - {{id: native, base_url: "{native.url}", responses_api: true, keys: [{{id: n1, secret: sk-n-1}}, {{id: n2, secret: sk-n-2}}]}}
  - {{id: chat, base_url: "{chat.url}", keys: [{{id: c1, secret: sk-c-1}}]}}
model_aliases:
  direct: native:gpt-4.1-mini
  translated: chat:gpt-4o-mini
storage: {{runtime: {{type: redis, url: "{redis_server.url}"}}}}
"""
    servers = [ServerThread(App(parse_config(config, "<test>", {}))).start() for _ in range(2)]
    yield [Gateway(s.app, s) for s in servers], native, chat  # type: ignore[arg-type]
    for s in servers:
        s.stop()


def test_previous_response_id_across_two_gateways_sharing_redis(
    two_gateways: tuple[list[Gateway], MockUpstream, MockUpstream],
) -> None:
    (one, two), native, chat = two_gateways
    c1 = openai.OpenAI(base_url=one.url + "/v1", api_key="x", max_retries=0)
    c2 = openai.OpenAI(base_url=two.url + "/v1", api_key="x", max_retries=0)
    with c1, c2:
        first = c1.responses.create(model="translated", input="My name is Ada.")
        second = c2.responses.create(model="translated", previous_response_id=first.id, input="Name?")
        assert second.output_text
        sent = chat.received[-1].body["messages"]
        assert sent[0] == {"role": "user", "content": "My name is Ada."}
        assert sent[1]["role"] == "assistant" and sent[2] == {"role": "user", "content": "Name?"}
        assert c2.responses.retrieve(first.id).id == first.id
        # An upstream's own response: the follow-up goes back to the key that holds it.
        for _ in range(4):  # whichever key the first request takes
            up = c1.responses.create(model="direct", input="Hi")
            key = native.received[-1].headers["Authorization"]
            c2.responses.create(model="direct", previous_response_id=up.id, input="More")
            assert native.received[-1].headers["Authorization"] == key
            assert native.received[-1].body["previous_response_id"] == up.id


def test_a_pinned_follow_up_retries_only_on_the_key_that_holds_the_response(
    serve_fake: Callable[..., Any], gateway_factory: Callable[..., Gateway]
) -> None:
    """A follow-up goes to the key whose upstream holds the previous response; when that
    attempt fails, the retry is on the same key, never on the provider's other key."""
    native = serve_fake(MockUpstream)
    gw = gateway_factory(
        f"""
providers:
  - id: native
    base_url: {native.url}
    responses_api: true
    keys: [{{id: n1, secret: sk-n-1}}, {{id: n2, secret: sk-n-2}}]
model_aliases:
  resp: native:gpt-4.1-mini
routing: {{strategy: round_robin}}
retry: {{max_attempts: 3, max_same_key_retries: 1, backoff_base: 0}}
"""
    )
    with openai.OpenAI(base_url=gw.url + "/v1", api_key="x", max_retries=0) as client:
        first = client.responses.create(model="resp", input="Hi")
        holder = native.received[-1].bearer
        native.script.append(Scripted(status=500, body={"error": {"message": "boom"}}))
        second = client.responses.create(model="resp", input="Again", previous_response_id=first.id)
    follow_ups = native.received[-2:]
    assert second.output_text
    assert [r.bearer for r in follow_ups] == [holder, holder]
