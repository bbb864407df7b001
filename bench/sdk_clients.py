"""LangChain (``ChatOpenAI(use_responses_api=True)``) and the OpenAI Agents SDK (a tool-using
agent on ``OpenAIResponsesModel``) against the gateway's Responses API, unchanged. Run by
``bench/sdk_clients.sh`` in a virtual environment that has ``langchain-openai`` and
``openai-agents`` (not test dependencies: they are large).

    python bench/sdk_clients.py BASE_URL API_KEY MODEL...

Prints one line per check; exits 1 if any failed. Tracing of the Agents SDK is off (it would
send traces to api.openai.com)."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Callable
from typing import Any

from agents import (  # type: ignore[import-not-found]
    Agent,
    OpenAIResponsesModel,
    Runner,
    function_tool,
    set_tracing_disabled,
)
from langchain_openai import ChatOpenAI  # type: ignore[import-not-found]
from openai import AsyncOpenAI

FAILED: list[str] = []
CALLS: list[str] = []


def check(model: str, what: str, fn: Callable[[], str]) -> None:
    try:
        print(f"ok   {model} {what}: {fn()}")
    except Exception as exc:  # a report line per failing client, then the next check
        FAILED.append(what)
        print(f"FAIL {model} {what}: {type(exc).__name__}: {exc}")


@function_tool  # type: ignore[untyped-decorator]
def get_weather(city: str) -> str:
    """Current weather for a city."""
    CALLS.append(city)
    return f'{{"city": "{city}", "temp_c": 21}}'


def langchain(base_url: str, key: str, model: str) -> None:
    llm = ChatOpenAI(model=model, base_url=base_url, api_key=key, use_responses_api=True)

    def invoke() -> str:
        msg = llm.invoke("Say hello")
        assert msg.text, msg
        return repr(msg.text)

    def stream() -> str:
        text = "".join(chunk.text for chunk in llm.stream("Say hello"))
        assert text
        return repr(text)

    def tools() -> str:
        msg = llm.bind_tools([get_weather_schema()]).invoke("Weather in Paris?")
        assert msg.tool_calls and msg.tool_calls[0]["name"] == "get_weather", msg
        return f"tool call {msg.tool_calls[0]['name']}({msg.tool_calls[0]['args']})"

    check(model, "langchain invoke", invoke)
    check(model, "langchain stream", stream)
    check(model, "langchain bind_tools", tools)


def get_weather_schema() -> dict[str, Any]:
    return {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Current weather for a city",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string"}},
                "required": ["city"],
            },
        },
    }


def agent(base_url: str, key: str, model: str) -> None:
    client = AsyncOpenAI(base_url=base_url, api_key=key, max_retries=0)
    bot = Agent(
        name="weather",
        instructions="Answer weather questions with the get_weather tool.",
        model=OpenAIResponsesModel(model=model, openai_client=client),
        tools=[get_weather],
    )

    def run() -> str:
        before = len(CALLS)
        result = asyncio.run(Runner.run(bot, "What is the weather in Paris?"))
        assert len(CALLS) > before, "the agent did not call its tool"
        assert result.final_output, result
        kinds = [item.type for item in result.new_items]
        return f"tool ran for {CALLS[before:]}, items {kinds}, final {result.final_output!r}"

    check(model, "agents Runner.run with a function tool", run)


def main() -> int:
    base_url, key, *models = sys.argv[1:]
    set_tracing_disabled(True)
    for model in models:
        langchain(base_url, key, model)
        agent(base_url, key, model)
    print(f"{len(FAILED)} check(s) failed" if FAILED else "all checks passed")
    return 1 if FAILED else 0


if __name__ == "__main__":
    raise SystemExit(main())
