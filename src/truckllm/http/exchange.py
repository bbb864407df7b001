"""One whole exchange on the shared client, for the gateway's own calls out (webhook sinks, the
``http`` store, ``truckllm check --probe``): bounded in time as a whole and in the size of the
answer, through the proxy the caller chose (:meth:`ProxyEnv.choose`: the environment's
``HTTPS_PROXY``/``NO_PROXY``, or the caller's own ``proxy`` option)."""

from __future__ import annotations

import asyncio
import ssl

from truckllm.http.client import HTTPClient, HTTPClientError, ParsedURL, Proxy, encode_headers

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
    """``(status, headers, body)`` of one POST, all within ``seconds`` (through ``proxy`` when
    given). Raises :class:`HTTPClientError`, :class:`OSError` or :class:`TimeoutError`."""
    return await exchange_whole(
        client, url, encode_headers(headers), body, seconds, max_answer, proxy=proxy
    )


async def exchange_whole(
    client: HTTPClient,
    url: ParsedURL,
    head: bytes,
    body: bytes,
    seconds: float,
    max_answer: int = MAX_ANSWER_BYTES,
    *,
    method: bytes = b"POST",
    tls: ssl.SSLContext | None = None,
    proxy: Proxy | None = None,
) -> tuple[int, dict[str, str], bytes]:
    """:func:`post_whole` for any method, with pre-encoded header lines, a TLS context and a
    forward proxy (as :meth:`HTTPClient.post` takes them)."""
    async with asyncio.timeout(seconds):
        response = await client.post(
            url,
            head,
            body,
            connect_timeout=seconds,
            read_timeout=seconds,
            total=seconds,
            tls=tls,
            proxy=proxy,
            method=method,
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
