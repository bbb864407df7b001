"""A cheap upper-bound guess of a request's tokens, reserved against limits before the call and
reconciled with the real usage afterwards. No tokenizer: about 4 bytes of JSON per token."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

_IMAGE_TOKENS = 765  # a high-detail 512x512 tile set in OpenAI's accounting
_SCAN_ABOVE = 32 * 1024  # larger bodies are walked so base64 images do not count as text


@dataclass(frozen=True, slots=True)
class Estimate:
    prompt_tokens: int
    output_tokens: int

    @property
    def total(self) -> int:
        return self.prompt_tokens + self.output_tokens


_UPLOADS = frozenset(
    {"transcriptions", "translations", "audio.transcriptions", "audio.translations"}
)


def estimate(endpoint: str, body: dict[str, Any], raw_len: int, default_output: int) -> Estimate:
    if endpoint in _UPLOADS:  # an audio file's bytes are not tokens: nothing to reserve
        return Estimate(1, 0)
    if endpoint == "completions":
        requested = body.get("max_tokens")
        output = requested if isinstance(requested, int) and requested > 0 else 16
        return Estimate(max(raw_len // 4, 1), output)
    if endpoint != "chat":
        return Estimate(max(raw_len // 4, 1), 0)
    prompt = raw_len // 4 if raw_len <= _SCAN_ABOVE else _walk(body.get("messages"))
    requested = body.get("max_completion_tokens") or body.get("max_tokens")
    output = requested if isinstance(requested, int) and requested > 0 else default_output
    n = body.get("n")
    if isinstance(n, int) and n > 1:
        output *= n
    return Estimate(max(prompt, 1), output)


def _walk(messages: Any) -> int:
    chars = 0
    images = 0
    if not isinstance(messages, list):
        return 1
    for m in messages:
        if not isinstance(m, dict):
            continue
        content = m.get("content")
        if isinstance(content, str):
            chars += len(content)
        elif isinstance(content, list):
            for part in content:
                if isinstance(part, dict):
                    if part.get("type") == "text":
                        chars += len(str(part.get("text", "")))
                    else:
                        images += 1
        chars += len(str(m.get("tool_calls", ""))) + 16
    return chars // 4 + images * _IMAGE_TOKENS
