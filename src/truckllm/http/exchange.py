"""One whole POST exchange on the shared client, for the gateway's own calls out (webhook sinks,
the ``http`` store): bounded in time as a whole and in the size of the answer, through the
proxy the caller chose (:meth:`ProxyEnv.choose`: the environment's ``HTTPS_PROXY``/``NO_PROXY``,
or the caller's own ``proxy`` option)."""

from __future__ import annotations

import asyncio

from truckllm.http.client import HTTPClient, HTTPClientError, ParsedURL, encode_headers
from truckllm.http.proxy import Proxy

MAX_ANSWER_BYTES = 16 * 1024 * 1024


class AnswerTooLarge(HTTPClientError):
    """The answer's body was longer than the caller accepts."""


async def post_whole(
    client: HTTPClient,
    url: ParsedURL,
    headers: dict[str, str],
    body: bytes,
    seconds: float,
    max_answer: int = MAX_ANSWER_BYTES,
    proxy: Proxy | None = None,
) -> tuple[int, dict[str, str], bytes]:
    """``(status, headers, body)`` of one POST, all within ``seconds``. Raises
    :class:`HTTPClientError`, :class:`OSError` or :class:`TimeoutError`."""
    async with asyncio.timeout(seconds):
        response = await client.post(
            url,
            encode_headers(headers),
            body,
            connect_timeout=seconds,
            read_timeout=seconds,
            total=seconds,
            proxy=proxy,
        )
        try:
            parts: list[bytes] = []
            size = 0
            async for chunk in response:
                size += len(chunk)
                if size > max_answer:
                    raise AnswerTooLarge(f"answer larger than {max_answer} bytes")
                parts.append(chunk)
        finally:
            response.release()
    return response.status, response.headers, b"".join(parts)
