"""OpenAI embeddings requests through Gemini's ``embedContent`` and ``batchEmbedContents``.

A single string goes to ``embedContent``, a list of strings to ``batchEmbedContents`` (one
request per string, in order). ``dimensions`` becomes ``outputDimensionality``. The answer is
OpenAI's ``{"object": "list", "data": [...], "model", "usage"}``, with each vector as floats or,
for ``encoding_format: "base64"`` (the official SDKs' default), as base64 of little-endian
float32. Token arrays cannot be sent: Gemini embeds text only. Gemini reports no token counts
for embeddings; when ``usageMetadata`` is absent the usage is an estimate (4 characters a token)
and marked as one.
"""

from __future__ import annotations

import base64
import struct
from typing import Any

from truckllm.providers.base import Usage
from truckllm.providers.gemini.errors import Unsupported


def embed_request(body: dict[str, Any], model_path: str) -> tuple[str, dict[str, Any], list[str]]:
    """The Gemini method, its body, and the input texts. ``model_path`` is ``models/{name}``."""
    fmt = body.get("encoding_format")
    if fmt not in (None, "float", "base64"):
        raise Unsupported(
            f"Invalid value for 'encoding_format': {fmt!r}.", "encoding_format", "invalid_value"
        )
    inp = body.get("input")
    texts = [inp] if isinstance(inp, str) else inp
    if not isinstance(texts, list) or not texts or not all(isinstance(t, str) for t in texts):
        raise Unsupported(
            "The Gemini provider embeds text only: 'input' must be a string or an array of "
            "strings (token arrays are not supported).",
            "input",
            "invalid_value",
        )
    extra: dict[str, Any] = {}
    dims = body.get("dimensions")
    if dims is not None:
        extra["outputDimensionality"] = dims
    if isinstance(inp, str):
        return "embedContent", {"content": {"parts": [{"text": inp}]}, **extra}, texts
    requests = [{"model": model_path, "content": {"parts": [{"text": t}]}, **extra} for t in texts]
    return "batchEmbedContents", {"requests": requests}, texts


def embed_response(
    native: dict[str, Any], body: dict[str, Any], model: str, texts: list[str]
) -> tuple[dict[str, Any], Usage] | None:
    """OpenAI's embeddings list and its usage; ``None`` if ``native`` is not a Gemini answer."""
    single = native.get("embedding")
    vectors = [single] if single is not None else native.get("embeddings")
    if not isinstance(vectors, list) or len(vectors) != len(texts):
        return None
    as_base64 = body.get("encoding_format") == "base64"
    data = []
    for i, vec in enumerate(vectors):
        values = vec.get("values") if isinstance(vec, dict) else None
        if not isinstance(values, list):
            return None
        emb: Any = (
            base64.b64encode(struct.pack(f"<{len(values)}f", *values)).decode()
            if as_base64
            else values
        )
        data.append({"object": "embedding", "index": i, "embedding": emb})
    meta = native.get("usageMetadata")
    counted = meta.get("promptTokenCount") if isinstance(meta, dict) else None
    if isinstance(counted, int):
        usage = Usage(prompt_tokens=counted)
    else:
        usage = Usage(prompt_tokens=sum(max(1, len(t) // 4) for t in texts), estimated=True)
    out = {
        "object": "list",
        "data": data,
        "model": model,
        "usage": {"prompt_tokens": usage.prompt_tokens, "total_tokens": usage.prompt_tokens},
    }
    return out, usage
