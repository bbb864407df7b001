"""What goes back to a Responses API client when its request was served in the internal form:
the answer and the stream in the Responses API's shapes. Errors are OpenAI's own shape already
(the internal form's), so they pass as they are; a stream broken off after its first byte ends
with ``response.failed``."""

from __future__ import annotations

from typing import Any

import orjson

from truckllm.dialects.openai_responses.response import Echo, from_chat
from truckllm.dialects.openai_responses.stream import ChatToResponsesStream
from truckllm.errors import APIError
from truckllm.providers.base import OPENAI_RESPONSES, Usage
from truckllm.providers.errors import error_body

DIALECT = OPENAI_RESPONSES


class ResponsesEgress:
    """One request's way back. ``response`` is the Response the client got, once it is
    complete (whole answers and finished streams), for the gateway to keep."""

    dialect = DIALECT

    def __init__(self, echo: Echo) -> None:
        self.echo = echo
        self.response: dict[str, Any] | None = None
        self._out: ChatToResponsesStream | None = None

    def whole(self, status: int, body: bytes, usage: Usage | None) -> bytes:
        if status >= 400:
            return body  # already OpenAI's error shape
        try:
            completion = orjson.loads(body)
        except orjson.JSONDecodeError:
            completion = None
        if not isinstance(completion, dict):
            return error_body("the upstream's answer could not be read", 502, "upstream_error")
        self.response = from_chat(completion, self.echo, usage)
        return orjson.dumps(self.response)

    def stream(self) -> ChatToResponsesStream:
        self._out = ChatToResponsesStream(self.echo)
        return self._out

    def finished(self) -> dict[str, Any] | None:
        """The streamed response once ``finish`` built it."""
        if self._out is not None and self._out.response is not None:
            self.response = self._out.response
        return self.response

    def error_event(self, err: APIError) -> bytes:
        out = self._out if self._out is not None else ChatToResponsesStream(self.echo)
        code = "rate_limit_exceeded" if err.status == 429 else "server_error"
        return out.failed(code, err.message)
