"""Prompt-cache affinity: the requests of one conversation go to one key.

OpenAI, Anthropic and Gemini cache long prompt prefixes per organisation or key and bill the
cached part at a fraction of the input price; spreading one conversation over many keys throws
that away. With ``routing.affinity.enabled`` a request names its conversation (:meth:`ident`):
the session header configured, OpenAI's ``prompt_cache_key``, the client's own session header
(Claude Code's ``X-Claude-Code-Session-Id``, Codex's ``session-id``), or else a hash of the
first ``prefix_bytes`` of its system prompt and of its first ``prefix_messages`` messages. The key that
served the last request of that conversation serves the next one (:meth:`pick`) while it is
eligible as the balancer sees it (not cooling, breaker closed, not ejected, room under every
limit), keeps ``min_headroom`` of its limits, and, on an ordered (failover) route, belongs to
the first provider; otherwise the balancer picks as usual and the conversation moves with it.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from typing import Any

import orjson

from truckllm.config.schema import AffinityConfig
from truckllm.routing.estimate import Estimate
from truckllm.routing.keystate import KeyState, ProviderState
from truckllm.routing.router import Pick, Router

_SYSTEM_ROLES = ("system", "developer")


class Affinity:
    """The conversations' keys, least recently used forgotten first past ``max_entries``. Used
    on the event loop only. Outlives reloads (:meth:`adopt`)."""

    def __init__(self, settings: AffinityConfig) -> None:
        self.settings = settings
        self.header = settings.header.lower().encode() if settings.header else None
        self.held_picks = 0  # picks that kept a conversation on its key
        self.moves = 0  # picks that moved a known conversation to another key
        self._keys: OrderedDict[str, str] = OrderedDict()

    def adopt(self, previous: Affinity | None) -> Affinity:
        """This table, holding the conversations ``previous`` knew (a reload)."""
        if previous is not None:
            self._keys = previous._keys
            self.held_picks, self.moves = previous.held_picks, previous.moves
        return self

    def ident(
        self,
        model: str,
        body: dict[str, Any],
        headers: Iterable[tuple[bytes, bytes]],
        session: str | None,
    ) -> str | None:
        """The request's conversation, or ``None`` when it names none and has no prompt."""
        if self.header is not None:
            for name, value in headers:
                if name == self.header and value:
                    return f"{model}\x1fh\x1f{value.decode('latin-1')[:256]}"
        key = body.get("prompt_cache_key")
        if isinstance(key, str) and key:
            return f"{model}\x1fk\x1f{key[:256]}"
        if session:
            return f"{model}\x1fs\x1f{session}"
        prefix = self._prefix(body)
        if prefix is None:
            return None
        return f"{model}\x1fp\x1f{hashlib.sha256(prefix).hexdigest()[:32]}"

    def _prefix(self, body: dict[str, Any]) -> bytes | None:
        """The system prompt and the first messages, each serialised and cut at
        ``prefix_bytes`` (so that conversations sharing a long system prompt still differ)."""
        system = body.get("system") or body.get("instructions") or body.get("systemInstruction")
        messages = body.get("messages") or body.get("input") or body.get("contents")
        if isinstance(messages, str):
            messages = [messages]
        if not isinstance(messages, list):
            return None
        lead = 0  # a chat request's system messages belong to the system prompt
        while (
            lead < len(messages)
            and isinstance(messages[lead], dict)
            and messages[lead].get("role") in _SYSTEM_ROLES
        ):
            lead += 1
        if system is None and lead:
            system = messages[:lead]
        early = messages[lead : lead + self.settings.prefix_messages]
        if system is None and not early:
            return None
        n = self.settings.prefix_bytes
        return orjson.dumps(system)[:n] + b"\x1f" + orjson.dumps(early)[:n]

    def pick(
        self,
        router: Router,
        ident: str,
        provider_ids: Sequence[str],
        est: Estimate,
        exclude: set[str] | frozenset[str],
        balance: bool,
    ) -> Pick | None:
        """The conversation's key, reserved, when it may serve this request; else ``None``."""
        key_id = self._keys.get(ident)
        if key_id is None:
            return None
        now = router.clock()
        held = self._held(router, key_id, provider_ids if balance else provider_ids[:1], est, now)
        if held is None or key_id in exclude:
            return None
        state, ps = held
        self._keys.move_to_end(ident)
        self.held_picks += 1
        state.reserve(now, est.total)
        if ps.outlier.ejected_until:
            ps.outlier.on_pick(now)
        return Pick(router, state, ps, now, est.total)

    def _held(
        self, router: Router, key_id: str, provider_ids: Sequence[str], est: Estimate, now: float
    ) -> tuple[KeyState, ProviderState] | None:
        for pid in provider_ids:
            ps = router.providers.get(pid)
            if ps is None:
                continue
            s = next((k for k in ps.keys if k.key.id == key_id), None)
            if s is None:
                continue
            if ps.breaker.ready_at(now) > now:
                return None
            if ps.outlier.ejected_until and not ps.outlier.admits(now):
                return None
            if s.outlier.ejected_until and not s.outlier.admits(now):
                return None
            if s.ready_at(now, est.total) > now:
                return None
            if s.headroom(now, est.total) < self.settings.min_headroom:
                return None
            return s, ps
        return None

    def remember(self, ident: str, key_id: str) -> None:
        old = self._keys.get(ident)
        if old is not None and old != key_id:
            self.moves += 1
        self._keys[ident] = key_id
        self._keys.move_to_end(ident)
        while len(self._keys) > self.settings.max_entries:
            self._keys.popitem(last=False)
