"""Anthropic's Messages API as an inbound dialect: ``POST /v1/messages`` and
``/v1/messages/count_tokens``, in Anthropic's request, answer, event and error shapes."""

from truckllm.dialects.anthropic_messages.egress import DIALECT, MessagesEgress, api_error_body
from truckllm.dialects.anthropic_messages.errors import error_body, error_type_for
from truckllm.dialects.anthropic_messages.request import TranslationError, to_chat
from truckllm.dialects.anthropic_messages.response import from_chat
from truckllm.dialects.anthropic_messages.stream import ChatToMessagesStream

__all__ = [
    "DIALECT",
    "ChatToMessagesStream",
    "MessagesEgress",
    "TranslationError",
    "api_error_body",
    "error_body",
    "error_type_for",
    "from_chat",
    "to_chat",
]
