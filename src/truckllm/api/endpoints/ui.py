"""``GET /ui/...``: the dashboard's static files (:mod:`truckllm.ui`), only while the admin API
is on (``server.admin_api_key`` set). The files hold no data and no secret: the page logs in
with the admin key and reads the admin API, so the dashboard costs the proxied requests nothing.
GET and HEAD only; a strict Content-Security-Policy (the page's own files, the admin API, no
inline script, no framing)."""

from __future__ import annotations

from truckllm.api.routes import Request, Route
from truckllm.api.services import Services
from truckllm.errors import APIError
from truckllm.ui import INDEX, Asset, Assets

PREFIX = "/ui/"
CSP = (
    b"default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    b"connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
_COMMON = [
    (b"content-security-policy", CSP),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"x-frame-options", b"DENY"),
    (b"vary", b"accept-encoding"),
]


def _not_found(path: str) -> APIError:
    return APIError(404, f"Unknown request URL: GET {path}.", code="unknown_url")


def _accepts_gzip(headers: list[tuple[bytes, bytes]]) -> bool:
    return any(n == b"accept-encoding" and b"gzip" in v for n, v in headers)


def _etag_matches(headers: list[tuple[bytes, bytes]], etag: bytes) -> bool:
    return any(n == b"if-none-match" and etag in v for n, v in headers)


async def _send(req: Request, asset: Asset) -> None:
    headers = req.scope["headers"]
    etag = asset.etag.encode()
    cache = b"public, max-age=31536000, immutable" if asset.immutable else b"no-cache"
    out = [*_COMMON, (b"etag", etag), (b"cache-control", cache)]
    if _etag_matches(headers, etag):
        await req.send({"type": "http.response.start", "status": 304, "headers": out})
        await req.send({"type": "http.response.body", "body": b""})
        return
    body = asset.body
    if asset.gzipped is not None and _accepts_gzip(headers):
        body = asset.gzipped
        out.append((b"content-encoding", b"gzip"))
    out += [
        (b"content-type", asset.content_type.encode()),
        (b"content-length", str(len(body)).encode()),
    ]
    await req.send({"type": "http.response.start", "status": 200, "headers": out})
    await req.send({"type": "http.response.body", "body": body})


def routes(services: Services) -> list[Route]:
    assets = Assets()

    async def files(req: Request) -> None:
        path: str = req.scope["path"]
        if req.rt.config.server.admin_api_key is None:
            raise APIError(
                404, "The dashboard is off: set server.admin_api_key.", code="admin_disabled"
            )
        name = path[len(PREFIX) :] or INDEX
        asset = assets.get(name)
        if asset is None:
            raise _not_found(path)
        await _send(req, asset)

    async def bare(req: Request) -> None:  # relative URLs in the page need the slash
        await req.send(
            {
                "type": "http.response.start",
                "status": 308,
                "headers": [(b"location", PREFIX.encode()), (b"content-length", b"0")],
            }
        )
        await req.send({"type": "http.response.body", "body": b""})

    return [Route("GET", "/ui", bare), Route("GET", PREFIX, files, prefix=True)]
