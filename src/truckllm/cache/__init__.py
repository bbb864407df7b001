"""The response cache (exact match): requests answered again from a stored answer, whole or as
a stream in the client's dialect. See docs/cache.md."""

from truckllm.cache.answer import replay
from truckllm.cache.hook import Lookup, ResponseCache, with_send

__all__ = ["Lookup", "ResponseCache", "replay", "with_send"]
