"""What goes back to an Anthropic Messages client when its request was served in the internal
form: the answer, the stream and the errors in Anthropic's shapes."""

from __future__ import annotations

import orjson

from truckllm.dialects.anthropic_messages.errors import error_object, from_openai_error
from truckllm.dialects.anthropic_messages.response import from_chat
from truckllm.dialects.anthropic_messages.stream import ChatToMessagesStream, event
from truckllm.errors import APIError
from truckllm.providers.base import ANTHROPIC_MESSAGES, Usage

DIALECT = ANTHROPIC_MESSAGES


def api_error_body(err: APIError) -> bytes:
    """A gateway error (or a provider's OpenAI-shaped refusal it carries) in Anthropic's shape."""
    body = err.body()
    if body.startswith(b'{"type":"error"'):
        return body
    return from_openai_error(body, err.status)


class MessagesEgress:
    """One request's way back. ``model`` is the name the client asked for; ``stop`` its
    ``stop_sequences`` (to name the one that ended the text)."""

    dialect = DIALECT

    def __init__(self, model: str, stop: list[str] | None = None) -> None:
        self.model = model
        self.stop = stop or []

    def whole(self, status: int, body: bytes, usage: Usage | None) -> bytes:
        if status >= 400:
            return from_openai_error(body, status)
        try:
            completion = orjson.loads(body)
        except orjson.JSONDecodeError:
            completion = None
        if not isinstance(completion, dict):
            return from_openai_error(b"", 502)
        return orjson.dumps(from_chat(completion, self.model, usage, self.stop))

    def stream(self) -> ChatToMessagesStream:
        return ChatToMessagesStream(self.model, self.stop)

    def error_event(self, err: APIError) -> bytes:
        """The event that ends a stream the upstream broke off: the SDKs raise it."""
        return event("error", error_object(err.message, err.status if err.status >= 400 else 500))
