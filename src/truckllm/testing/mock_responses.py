"""The OpenAI mock's Responses API: ``POST /v1/responses`` as OpenAI answers it (JSON, or the
SSE event sequence with ``event:`` lines and ``sequence_number``), with the same behaviours as
its chat (latency, pacing, limits, faults, scripts). A function tool offered is called (the
``tool_choice`` one, else the first, with arguments that fit its parameters) unless the input
ends with a tool's output; a ``text.format`` JSON schema gets a small JSON value that fits it. Responses are kept in memory,
so ``previous_response_id``, ``GET`` and ``DELETE /v1/responses/{id}`` work as upstream ones do.
"""

from __future__ import annotations

import os
import time
from typing import TYPE_CHECKING, Any

import orjson
from aiohttp import web

from truckllm.testing.behaviour import reported_usage
from truckllm.testing.wire import Event, answer, fault_point
from truckllm.testing.wire import stream as send_stream

if TYPE_CHECKING:
    from truckllm.testing.mock import MockUpstream


def _id(prefix: str) -> str:
    return f"{prefix}_{os.urandom(16).hex()}"


def sample(schema: Any) -> Any:
    """A small value that fits a JSON schema (objects, arrays, strings, numbers, enums)."""
    if not isinstance(schema, dict):
        return None
    if schema.get("enum"):
        return schema["enum"][0]
    for key in ("anyOf", "oneOf"):
        if schema.get(key):
            return sample(schema[key][0])
    kind = schema.get("type")
    kind = kind[0] if isinstance(kind, list) and kind else kind
    if kind == "object" or "properties" in schema:
        return {name: sample(sub) for name, sub in (schema.get("properties") or {}).items()}
    if kind == "array":
        return [sample(schema.get("items"))]
    return {"integer": 1, "number": 1.5, "boolean": True, "null": None}.get(str(kind), "mock")


def _function_to_call(body: dict[str, Any]) -> str | None:
    tools = [
        t for t in body.get("tools") or () if isinstance(t, dict) and t.get("type") == "function"
    ]
    if not tools or body.get("tool_choice") == "none":
        return None
    items = body.get("input")
    last = items[-1] if isinstance(items, list) and items else None
    if isinstance(last, dict) and last.get("type") == "function_call_output":
        return None
    choice = body.get("tool_choice")
    if isinstance(choice, dict) and isinstance(choice.get("name"), str):
        return str(choice["name"])
    return str(tools[0].get("name"))


def _arguments(body: dict[str, Any], name: str) -> str:
    """A call's arguments: a small value that fits the tool's parameters (``{}`` without)."""
    for t in body.get("tools") or ():
        if isinstance(t, dict) and t.get("name") == name and isinstance(t.get("parameters"), dict):
            return orjson.dumps(sample(t["parameters"])).decode()
    return "{}"


class ResponsesAPI:
    """The handlers, over one :class:`MockUpstream`'s behaviours."""

    def __init__(self, mock: MockUpstream) -> None:
        self.mock = mock
        self.kept: dict[str, dict[str, Any]] = {}

    def routes(self) -> list[web.RouteDef]:
        return [
            web.post("/v1/responses", self.create),
            web.get("/v1/responses/{id}", self.retrieve),
            web.delete("/v1/responses/{id}", self.delete),
        ]

    async def retrieve(self, request: web.Request) -> web.Response:
        await self.mock.take(request, request.path)
        kept = self.kept.get(request.match_info["id"])
        if kept is None:
            return _not_found(request.match_info["id"])
        return web.Response(body=orjson.dumps(kept), content_type="application/json")

    async def delete(self, request: web.Request) -> web.Response:
        await self.mock.take(request, request.path)
        rid = request.match_info["id"]
        if self.kept.pop(rid, None) is None:
            return _not_found(rid)
        body = {"id": rid, "object": "response", "deleted": True}
        return web.Response(body=orjson.dumps(body), content_type="application/json")

    def _output(self, body: dict[str, Any], words: list[str]) -> list[dict[str, Any]]:
        fn = _function_to_call(body)
        if fn is not None:
            return [
                {
                    "id": _id("fc"),
                    "type": "function_call",
                    "status": "completed",
                    "arguments": _arguments(body, fn),
                    "call_id": _id("call"),
                    "name": fn,
                }
            ]
        fmt = (body.get("text") or {}).get("format") if isinstance(body.get("text"), dict) else None
        if isinstance(fmt, dict) and fmt.get("type") == "json_schema":
            text = orjson.dumps(sample(fmt.get("schema"))).decode()
        else:
            text = " ".join(words)
        part = {"type": "output_text", "annotations": [], "logprobs": [], "text": text}
        return [
            {
                "id": _id("msg"),
                "type": "message",
                "status": "completed",
                "role": "assistant",
                "content": [part],
            }
        ]

    def _response(self, body: dict[str, Any], prompt: int, completion: int) -> dict[str, Any]:
        prev = body.get("previous_response_id")
        return {
            "id": _id("resp"),
            "object": "response",
            "created_at": int(time.time()),
            "status": "completed",
            "background": False,
            "error": None,
            "incomplete_details": None,
            "instructions": body.get("instructions"),
            "max_output_tokens": body.get("max_output_tokens"),
            "model": str(body.get("model", "mock-model")),
            "output": [],
            "parallel_tool_calls": body.get("parallel_tool_calls", True),
            "previous_response_id": prev,
            "reasoning": {"effort": None, "summary": None},
            "store": body.get("store", True),
            "temperature": body.get("temperature", 1.0),
            "text": body.get("text") or {"format": {"type": "text"}},
            "tool_choice": body.get("tool_choice", "auto"),
            "tools": body.get("tools") or [],
            "top_p": body.get("top_p", 1.0),
            "truncation": "disabled",
            "usage": {
                "input_tokens": prompt,
                "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
                "output_tokens": completion,
                "output_tokens_details": {"reasoning_tokens": 0},
                "total_tokens": prompt + completion,
            },
            "user": None,
            "metadata": {},
        }

    async def create(self, request: web.Request) -> web.StreamResponse:
        mock = self.mock
        body, d, resp = await mock._begin(request)
        if resp is not None:
            return resp
        prev = body.get("previous_response_id")
        if prev is not None and prev not in self.kept:
            return _not_found(str(prev), "previous_response_id")
        n = d.reply_tokens if d.reply_tokens is not None else mock.reply_words
        limit = body.get("max_output_tokens")
        base = ["Hello", "from", "the", "TruckLLM", "mock", "upstream", "model", "speaking"]
        n = min(n, limit) if isinstance(limit, int) and limit > 0 else n
        words = [base[i % len(base)] for i in range(n)]
        prompt, completion, _ = reported_usage(d.usage, max(1, len(orjson.dumps(body)) // 4), n)
        response = self._response(body, prompt, completion)
        output = self._output(body, words)
        done = {**response, "output": output, "completed_at": int(time.time())}
        if body.get("store", True) is not False:
            self.kept[response["id"]] = done
        if not body.get("stream"):
            headers = {"Content-Type": "application/json"}
            wait = d.generation_time(len(words))
            return await answer(request, orjson.dumps(done), headers, d.fault, wait)
        events = _events(response, output, d.pieces(words))
        delays = [0.0] * len(events)
        delays[0] = d.ttft
        cut_after, stall_after = fault_point(d, len(events))
        return await send_stream(
            request,
            events,
            _sse,
            headers={"Content-Type": "text/event-stream; charset=utf-8"},
            delays=delays,
            cut_after=cut_after,
            stall_after=stall_after,
        )


def _events(
    response: dict[str, Any], output: list[dict[str, Any]], pieces: list[str]
) -> list[Event]:
    seq = iter(range(1 << 30))

    def ev(kind: str, **fields: Any) -> Event:
        return {"type": kind, **fields, "sequence_number": next(seq)}

    shell = {**response, "status": "in_progress", "usage": None}
    out: list[Event] = [
        ev("response.created", response=shell),
        ev("response.in_progress", response=shell),
    ]
    for index, item in enumerate(output):
        where = {"item_id": item["id"], "output_index": index}
        if item["type"] == "function_call":
            added = {**item, "arguments": "", "status": "in_progress"}
            out.append(ev("response.output_item.added", output_index=index, item=added))
            out.append(
                ev("response.function_call_arguments.delta", **where, delta=item["arguments"])
            )
            out.append(
                ev("response.function_call_arguments.done", **where, arguments=item["arguments"])
            )
        else:
            part = item["content"][0]
            added = {**item, "status": "in_progress", "content": []}
            out.append(ev("response.output_item.added", output_index=index, item=added))
            out.append(
                ev(
                    "response.content_part.added",
                    **where,
                    content_index=0,
                    part={**part, "text": ""},
                )
            )
            text = part["text"]
            chunks = pieces if "".join(pieces) == text else [text]
            for delta in chunks:
                out.append(
                    ev(
                        "response.output_text.delta",
                        **where,
                        content_index=0,
                        delta=delta,
                        logprobs=[],
                    )
                )
            out.append(
                ev("response.output_text.done", **where, content_index=0, text=text, logprobs=[])
            )
            out.append(ev("response.content_part.done", **where, content_index=0, part=part))
        out.append(ev("response.output_item.done", output_index=index, item=item))
    out.append(ev("response.completed", response={**response, "output": output}))
    return out


def _sse(ev: Event) -> bytes:
    if isinstance(ev, bytes):
        return ev
    if isinstance(ev, str):
        return f"data: {ev}\n\n".encode()
    return b"event: " + str(ev["type"]).encode() + b"\ndata: " + orjson.dumps(ev) + b"\n\n"


def _not_found(rid: str, param: str | None = None) -> web.Response:
    what = "Previous response" if param else "Response"
    body = {
        "error": {
            "message": f"{what} with id '{rid}' not found.",
            "type": "invalid_request_error",
            "param": param,
            "code": "previous_response_not_found" if param else None,
        }
    }
    return web.Response(
        status=400 if param else 404, body=orjson.dumps(body), content_type="application/json"
    )
