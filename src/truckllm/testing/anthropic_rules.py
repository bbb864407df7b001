"""What the fake Anthropic upstream refuses, as the real Messages API does: the request fields the
``anthropic`` SDK (2.16) types, the roles and content blocks, and the pairing of every
``tool_use`` with a ``tool_result`` in the next message."""

from __future__ import annotations

from typing import Any

REQUEST_FIELDS = frozenset(
    {
        "model",
        "max_tokens",
        "messages",
        "system",
        "stop_sequences",
        "stream",
        "metadata",
        "tools",
        "tool_choice",
        "thinking",
        "output_config",
        "cache_control",
        "container",
        "diagnostics",
        "inference_geo",
        "service_tier",
        "speed",
        "user_profile_id",
        "workspace_id",
    }
)
"""The fields of a Messages request, as the ``anthropic`` SDK's ``MessageCreateParams`` (2.16)
defines them: there are no sampling parameters (``temperature``, ``top_p``, ``top_k``)."""
BETA_FIELDS = frozenset(
    {
        "billing_policy",
        "compaction",
        "context_management",
        "fallback_credit_token",
        "fallbacks",
        "mcp_servers",
        "thread",
    }
)
"""What the beta Messages API takes besides (``anthropic.types.beta``'s params, less ``betas``,
which travels as the ``anthropic-beta`` header): accepted when a request names a beta, as Claude
Code's always do."""


def validate(body: dict[str, Any], beta: bool = False) -> str | None:
    """The real API's complaint about ``body``, for the rules a translation could break. With
    ``beta`` (an ``anthropic-beta`` header), the beta API's fields are accepted too."""
    for key in body:
        if key not in REQUEST_FIELDS and not (beta and key in BETA_FIELDS):
            return f"{key}: Extra inputs are not permitted"
    if not isinstance(body.get("model"), str):
        return "model: Field required"
    max_tokens = body.get("max_tokens")
    if not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 1:
        return "max_tokens: Field required"
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        return "messages: Field required"
    system = body.get("system")
    if system is not None and not isinstance(system, str | list):
        return "system: Input should be a valid string or list"
    if "tool_choice" in body and not body.get("tools"):
        return "tool_choice: may only be specified while providing tools"
    previous_uses: set[str] = set()
    for i, msg in enumerate(messages):
        role = msg.get("role") if isinstance(msg, dict) else None
        if role == "system":  # SystemMessageParam: an instruction mid-conversation
            if _system_problem(msg.get("content")):
                return f"messages.{i}.content: Input should be a string or text blocks"
            continue
        if role not in ("user", "assistant"):
            return f'messages.{i}.role: Input should be "user", "assistant" or "system"'
        content = msg.get("content")
        blocks = content if isinstance(content, list) else []
        if not isinstance(content, str | list):
            return f"messages.{i}.content: Input should be a valid string or list"
        for j, block in enumerate(blocks):
            problem = _block_problem(block, role)
            if problem:
                return f"messages.{i}.content.{j}: {problem}"
        results = {b["tool_use_id"] for b in blocks if b.get("type") == "tool_result"}
        if results - previous_uses:
            return (
                f"messages.{i}.content.0: unexpected `tool_use_id` found in `tool_result` blocks: "
                f"{', '.join(sorted(results - previous_uses))}. Each `tool_result` block must "
                "have a corresponding `tool_use` block in the previous message."
            )
        if previous_uses - results:
            return (
                f"messages.{i}: `tool_use` ids were found without `tool_result` blocks "
                f"immediately after: {', '.join(sorted(previous_uses - results))}. Each "
                "`tool_use` block must have a corresponding `tool_result` block in the next "
                "message."
            )
        previous_uses = {b["id"] for b in blocks if b.get("type") == "tool_use"}
    if previous_uses:
        return "messages: the final `tool_use` blocks have no `tool_result` blocks after them"
    return None


def _system_problem(content: Any) -> bool:
    if isinstance(content, str):
        return not content
    if not isinstance(content, list) or not content:
        return True
    return any(not isinstance(b, dict) or b.get("type") != "text" for b in content)


def _block_problem(block: Any, role: str) -> str | None:
    kind = block.get("type") if isinstance(block, dict) else None
    if kind == "text":
        return None if block.get("text") else "text content blocks must be non-empty"
    if kind == "image" and role == "user":
        source = block.get("source") or {}
        if source.get("type") == "base64" and source.get("media_type") in (
            "image/jpeg",
            "image/png",
            "image/gif",
            "image/webp",
        ):
            return None
        if source.get("type") == "url" and str(source.get("url", "")).startswith("http"):
            return None
        return "image.source: invalid image source"
    if kind == "document" and role == "user":
        return None
    if kind == "tool_use" and role == "assistant":
        ok = isinstance(block.get("id"), str) and isinstance(block.get("input"), dict)
        return None if ok else "tool_use: id and input are required"
    if kind == "tool_result" and role == "user":
        return None if isinstance(block.get("tool_use_id"), str) else "tool_use_id: required"
    if kind == "thinking" and role == "assistant":
        ok = isinstance(block.get("thinking"), str) and isinstance(block.get("signature"), str)
        return None if ok else "thinking: thinking and signature are required"
    if kind == "redacted_thinking" and role == "assistant":
        return None if isinstance(block.get("data"), str) else "redacted_thinking: data required"
    return f"Input tag '{kind}' found using 'type' does not match the expected tags"
