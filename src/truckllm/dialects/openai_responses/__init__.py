"""OpenAI's Responses API as an inbound dialect: ``POST /v1/responses`` in OpenAI's request,
answer and event shapes, translated to and from the internal form where the target does not
speak it natively."""

from truckllm.dialects.openai_responses.egress import DIALECT, ResponsesEgress
from truckllm.dialects.openai_responses.request import (
    NS_SEP,
    TranslationError,
    functions,
    input_items,
    to_chat,
)
from truckllm.dialects.openai_responses.response import Echo, new_id
from truckllm.dialects.openai_responses.stream import ChatToResponsesStream

__all__ = [
    "DIALECT",
    "NS_SEP",
    "ChatToResponsesStream",
    "Echo",
    "ResponsesEgress",
    "TranslationError",
    "functions",
    "input_items",
    "new_id",
    "to_chat",
]
