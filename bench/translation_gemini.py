"""CPU cost of the Gemini provider's translation, next to the OpenAI passthrough's work.

Per request, in microseconds (best of several timeit runs, one core):

* Gemini: OpenAI body -> ``generateContent`` body (translation + ``orjson.dumps``), and the
  native response bytes -> ``chat.completion`` bytes (``orjson.loads`` + translation +
  ``orjson.dumps``) with its usage;
* OpenAI passthrough for the same request: the body with ``model`` rewritten (copy +
  ``orjson.dumps``), and the usage read from the response bytes without re-serialising them;
* per stream event: one Gemini SSE event -> one ``chat.completion.chunk`` event, against the
  passthrough's check of an event for a usage object;
* embeddings (8 strings, 768 dimensions, base64 as the SDKs ask) both ways.

Both paths share the API layer's parse of the client body; it is not counted. Run::

    .venv/bin/python bench/translation_gemini.py [--quick]
"""

from __future__ import annotations

import argparse
import sys
import timeit
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

import orjson

from truckllm.providers.base import Reply
from truckllm.providers.gemini import _translate
from truckllm.providers.gemini.embeddings import embed_request, embed_response
from truckllm.providers.gemini.request import chat_request
from truckllm.providers.gemini.response import chat_completion
from truckllm.providers.gemini.stream import StreamTranslator
from truckllm.providers.openai import _take_usage, _usage_of_body

MODEL = "gemini-2.5-flash"
TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather for a city",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string"},
                "unit": {"type": "string", "enum": ["C", "F"]},
            },
            "required": ["city"],
            "additionalProperties": False,
        },
    },
}
SMALL = {"model": "smart", "messages": [{"role": "user", "content": "Hello there!"}]}
TOOLS = {
    "model": "smart",
    "messages": [
        {"role": "system", "content": "You are a helpful weather assistant. Be brief."},
        {"role": "user", "content": "What is the weather in Paris?"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": '{"temp_c": 21, "sky": "clear"}'},
        {"role": "assistant", "content": "It is 21 °C and clear in Paris."},
        {"role": "user", "content": "And in Oslo, in Fahrenheit?"},
    ],
    "tools": [TOOL],
    "tool_choice": "auto",
    "temperature": 0.3,
    "max_tokens": 256,
}
TEXT = "It is 21 °C and clear in Paris today, with a light breeze from the west. " * 4
USAGE_META = {"promptTokenCount": 120, "candidatesTokenCount": 60, "totalTokenCount": 180}
GEMINI_REPLY = orjson.dumps(
    {
        "candidates": [
            {
                "content": {"role": "model", "parts": [{"text": TEXT}]},
                "finishReason": "STOP",
                "index": 0,
            }
        ],
        "usageMetadata": USAGE_META,
        "modelVersion": MODEL,
        "responseId": "abc123",
    }
)
OPENAI_REPLY = orjson.dumps(
    {
        "id": "chatcmpl-abc123",
        "object": "chat.completion",
        "created": 1700000000,
        "model": "gpt-4o-mini",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": TEXT, "refusal": None},
                "logprobs": None,
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": 120, "completion_tokens": 60, "total_tokens": 180},
        "system_fingerprint": "fp_x",
    }
)
GEMINI_EVENT = (
    b"data: "
    + orjson.dumps(
        {
            "candidates": [
                {"content": {"role": "model", "parts": [{"text": " a few words"}]}, "index": 0}
            ],
            "usageMetadata": {"promptTokenCount": 120, "totalTokenCount": 120},
            "modelVersion": MODEL,
            "responseId": "abc123",
        }
    )
    + b"\n\n"
)
OPENAI_EVENT = (
    b"data: "
    + orjson.dumps(
        {
            "id": "chatcmpl-abc123",
            "object": "chat.completion.chunk",
            "created": 1700000000,
            "model": "gpt-4o-mini",
            "choices": [{"index": 0, "delta": {"content": " a few words"}, "finish_reason": None}],
        }
    )
    + b"\n\n"
)
OPENAI_USAGE_EVENT = (
    b"data: "
    + orjson.dumps(
        {
            "id": "chatcmpl-abc123",
            "object": "chat.completion.chunk",
            "choices": [],
            "usage": {"prompt_tokens": 120, "completion_tokens": 60, "total_tokens": 180},
        }
    )
    + b"\n\n"
)
EMBED_BODY = {
    "model": "gemini-embedding-001",
    "input": [f"document number {i} about the weather" for i in range(8)],
    "encoding_format": "base64",
}
EMBED_VALUES = [((i * 37) % 200 - 100) / 1000.0 for i in range(768)]
GEMINI_EMBED_REPLY = orjson.dumps({"embeddings": [{"values": EMBED_VALUES}] * 8})
OPENAI_EMBED_REPLY = orjson.dumps(
    {
        "object": "list",
        "data": [{"object": "embedding", "index": i, "embedding": "A" * 4096} for i in range(8)],
        "model": "text-embedding-3-small",
        "usage": {"prompt_tokens": 64, "total_tokens": 64},
    }
)


def passthrough_request(body: dict[str, Any]) -> bytes:
    rewritten = dict(body)
    rewritten["model"] = "gpt-4o-mini"
    return orjson.dumps(rewritten)


def gemini_chat(body: dict[str, Any]) -> None:
    orjson.dumps(chat_request(body, MODEL))
    out, _usage = chat_completion(orjson.loads(GEMINI_REPLY), MODEL)
    orjson.dumps(out)


def openai_chat(body: dict[str, Any]) -> None:
    passthrough_request(body)
    _usage_of_body(OPENAI_REPLY)


def gemini_event(translator: StreamTranslator) -> None:
    _translate(GEMINI_EVENT[:-2], translator)


def openai_event() -> None:
    # The passthrough's per-event work: look for a usage object; forward the bytes as they are.
    _ = b'"usage"' in OPENAI_EVENT


def gemini_embeddings() -> None:
    _method, native, texts = embed_request(EMBED_BODY, "models/gemini-embedding-001")
    orjson.dumps(native)
    done = embed_response(orjson.loads(GEMINI_EMBED_REPLY), EMBED_BODY, "m", texts)
    assert done is not None
    orjson.dumps(done[0])


def openai_embeddings() -> None:
    passthrough_request(EMBED_BODY)
    _usage_of_body(OPENAI_EMBED_REPLY)


def measure(fn: Callable[[], object], quick: bool) -> float:
    """Microseconds per call: the best of several runs, each about 0.1 s (0.02 s with quick)."""
    timer = timeit.Timer(fn)
    number, _ = timer.autorange()
    budget = 0.02 if quick else 0.1
    number = max(1, int(number * budget / 0.2))
    runs = timer.repeat(repeat=3 if quick else 7, number=number)
    return min(runs) / number * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="shorter runs (for CI smoke tests)")
    args = parser.parse_args()
    q = args.quick
    translator = StreamTranslator(MODEL, wants_usage=False)
    ending = StreamTranslator(MODEL, wants_usage=True)  # finish() leaves its state as it was
    ending.feed(orjson.loads(GEMINI_EVENT[6:]))
    ending.feed({"candidates": [{"finishReason": "STOP", "index": 0}], "usageMetadata": USAGE_META})
    sink = Reply(200, "text/event-stream", {})

    rows = [
        (
            "chat, one user message (request + response)",
            measure(lambda: gemini_chat(SMALL), q),
            measure(lambda: openai_chat(SMALL), q),
        ),
        (
            "chat, 6 messages with tools and a tool turn",
            measure(lambda: gemini_chat(TOOLS), q),
            measure(lambda: openai_chat(TOOLS), q),
        ),
        (
            "  of which request translation only",
            measure(lambda: orjson.dumps(chat_request(TOOLS, MODEL)), q),
            measure(lambda: passthrough_request(TOOLS), q),
        ),
        (
            "stream: one text event",
            measure(lambda: gemini_event(translator), q),
            measure(openai_event, q),
        ),
        (
            "stream: end (finish, usage chunk, [DONE]) / usage event",
            measure(ending.finish, q),
            measure(lambda: _take_usage(OPENAI_USAGE_EVENT, sink, False), q),
        ),
        (
            "embeddings, 8 inputs x 768 dims, base64",
            measure(gemini_embeddings, q),
            measure(openai_embeddings, q),
        ),
    ]
    print(f"Python {sys.version.split()[0]}, microseconds per operation (lower is better)\n")
    print("| operation | gemini translation | openai passthrough | ratio |")
    print("|---|---:|---:|---:|")
    for name, g, o in rows:
        print(f"| {name} | {g:.1f} | {o:.1f} | {g / o:.1f}x |")


if __name__ == "__main__":
    main()
