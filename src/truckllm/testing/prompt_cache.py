"""The providers' prompt caches, simulated: per API key, the prompt prefixes seen so far, and
how many tokens of a new prompt were read from that cache.

OpenAI, Anthropic and Gemini all cache long prompt prefixes per organisation or key and bill
the cached part at a fraction of the input price. The fakes report it each in their provider's
way (OpenAI ``usage.prompt_tokens_details.cached_tokens``, Anthropic
``cache_read_input_tokens`` with ``input_tokens`` the uncached rest, Gemini
``cachedContentTokenCount``) when a prefix repeats on the same key, which is what the gateway's
prompt-cache affinity is for. A prefix counts by whole prompt parts (the system prompt, each
message), at about four bytes a token, from ``min_tokens`` on (1,024 at all three providers)."""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Iterable
from typing import Any

import orjson


class PromptCache:
    """Not thread-safe: used on the fake's event loop. Bounded: the least recently used
    prefixes go past ``max_prefixes``."""

    def __init__(self, min_tokens: int = 1024, max_prefixes: int = 200_000) -> None:
        self.min_tokens = min_tokens
        self.max_prefixes = max_prefixes
        self._seen: OrderedDict[tuple[str, bytes], None] = OrderedDict()

    def cached_tokens(self, key: str, parts: Iterable[Any]) -> int:
        """Tokens of the longest prefix of ``parts`` this key has seen before; then remembers
        every prefix of this prompt for the key."""
        h = hashlib.sha256()
        size = best = 0
        prefixes: list[tuple[str, bytes]] = []
        for part in parts:
            data = orjson.dumps(part)
            h.update(len(data).to_bytes(8, "big"))
            h.update(data)
            size += len(data)
            k = (key, h.digest())
            if k in self._seen:
                self._seen.move_to_end(k)
                best = size
            prefixes.append(k)
        for k in prefixes:
            self._seen[k] = None
        while len(self._seen) > self.max_prefixes:
            self._seen.popitem(last=False)
        tokens = best // 4
        return tokens if tokens >= self.min_tokens else 0
